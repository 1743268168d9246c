"""The GPU check: correctness and speed of the CUDA path in one run (``benchmarks/gpu_check.sh``).

Sections, each with its own time budget (a section that fails or runs out of time records its error
and the others still run; the JSON is rewritten after every section):

- ``tests``: the counter-based stream on the device equals the CPU's bit for bit; the device draws
  the CPU's sets from the same seed (share of identical draws, differences only at CDF boundaries);
  sampled attention equals dense attention with the same sets (values and gradients, fp32);
  bf16 autocast against fp32 with the same sets, within stated tolerances; the same seed gives the
  same sets and logits twice; no host synchronisation inside the forward pass
  (``torch.cuda.set_sync_debug_mode("error")``) for the whole model.
- ``inference``: images per second in bf16 at batch 1/8/32 (hiera-s and focal-l at 1024).
- ``train``: one training step (forward, backward, AdamW step, bf16 autocast): time and peak
  memory, ours against the reference formulation (``reference_decoder.py``).
- ``decoder``: the decoder alone, ours against the reference formulation: time and the largest
  difference of the logits with the same sets (the reference replays ours).
- ``attention``: one cross-attention layer of the paper-size decoder (hidden 512, 8 heads, 101
  queries) at the largest level of 1024 and 2048 inputs: the attention part (projected q, k, v
  given) sampled at 10 % with the Triton kernels, with PyTorch's SDPA and the set as a mask, and
  full SDPA; and the whole layer (projections included), folded and projected.

``--device cpu --small`` (or ``--dry-run``) runs every section at tiny sizes on the CPU, the
Triton kernels through Triton's interpreter, to check the script itself. Times come from CUDA
events after warm-up calls (CPU: wall clock).

Usage: python benchmarks/gpu_check.py --json results/gpu_check.json [--dry-run]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

if "--dry-run" in sys.argv or ("--device" in sys.argv and "cpu" in sys.argv):
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels on CPU tensors

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_json  # noqa: E402
from reference_decoder import use_reference_decoder  # noqa: E402

import boltzformer  # noqa: E402
from boltzformer.model.kernels import counter_rng, triton_usable  # noqa: E402
from boltzformer.model.attention import MultiHeadAttention, sampled_attention_rows  # noqa: E402
from boltzformer.model.sampling import AttentionSelection, BoltzmannSampler, sample_token_indices  # noqa: E402

#: seconds per section on one H100 (about 7 minutes in all, start-up aside)
BUDGETS = {"tests": 60, "inference": 130, "train": 110, "decoder": 50, "attention": 60}
#: bf16 against fp32 with the same sets: largest |difference| / largest |fp32 value|
BF16_TOLERANCE = 2e-2


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def budget(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds`` (between CUDA calls)."""
    def handler(signum, frame):
        raise SectionTimeout(f"section ran past its budget of {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat: int, warmup: int = 1) -> float:
    """Seconds per call, the mean of ``repeat`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / repeat
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def _tokenizer_overrides(preset: str) -> dict:
    """Neither the timings nor these checks depend on which tokenizer makes the ids: where the CLIP
    tokenizer of the paper-size presets cannot be loaded (a bare GPU machine has neither ../shared nor
    internet), they are built with the hash tokenizer, and the run says so."""
    if boltzformer.get_preset(preset).text.tokenizer != "clip":
        return {}
    from boltzformer.model.clip_tokenizer import load_clip_tokenizer

    try:
        load_clip_tokenizer()
        return {}
    except ValueError:
        print(f"{preset}: no CLIP tokenizer files here; built with the hash tokenizer (same sizes and timings)", flush=True)
        return {"text.tokenizer": "hash"}


def build(preset: str, device, impl: str = "efficient", **overrides):
    """The model with its parameters made on ``device`` (a 340M-parameter encoder takes seconds to
    initialise on a CPU), or made on the CPU and moved where that fails; with ``impl="reference"``,
    the reference code's decoder formulation (``reference_decoder.py``, same weights)."""
    overrides = {**_tokenizer_overrides(preset), **overrides}
    try:
        with device:
            model = boltzformer.build_model(preset, **overrides)
    except Exception as e:  # noqa: BLE001
        print(f"building {preset} on {device} failed ({e!r}); building on the CPU", flush=True)
        model = boltzformer.build_model(preset, **overrides).to(device)
    return use_reference_decoder(model) if impl == "reference" else model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def _attention_case(device, C=32, H=4, Q=5, N=300, ratio=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    q, v, pos = (torch.randn(2, T, C, generator=g).to(device) for T in (Q, N, N))
    idx, valid = sample_token_indices(torch.randn(2, H, Q, N, generator=g), 0.5, ratio, generator=g)
    return q, v, pos, idx.to(device), valid.to(device)


def section_tests(args, device) -> list[dict]:
    rows = []

    def check(name, ok, value, rule):
        rows.append({"check": name, "ok": bool(ok), "value": value, "rule": rule})
        print(rows[-1], flush=True)

    # the stream, on the device and on the CPU
    seed = torch.tensor(123456789, device=device)
    if device.type == "cuda" and triton_usable(seed):
        from boltzformer.model.kernels import triton_attention

        ours = triton_attention.exponentials(seed, 1 << 20).cpu()
    else:
        ours = counter_rng.exponentials(seed, 1 << 20).cpu()
    same = int((ours == counter_rng.exponentials(123456789, 1 << 20)).sum())
    check("stream equals the CPU's", same == 1 << 20, f"{same} / {1 << 20}", "all equal")
    # the same seed's sets on the device and on the CPU (a CPU generator serves both)
    logits = torch.randn(4, 101, 4096, generator=torch.Generator().manual_seed(0)) * 3
    cpu = sample_token_indices(logits, 0.5, 0.1, generator=torch.Generator().manual_seed(5), sets=8)[0]
    dev = sample_token_indices(logits.to(device), 0.5, 0.1, generator=torch.Generator().manual_seed(5), sets=8)[0]
    share = float((cpu == dev.cpu()).double().mean())
    # a draw differs where rounding moves a CDF boundary past it: about 1e-7 N = 4e-4 of them here
    check("device draws the CPU's tokens", share > 0.99, share, "share of equal draws > 0.99 (CDF boundaries)")
    # sampled == dense with the same sets, fp32 (TF32 off), values and gradients
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4).to(device)
    q, v, pos, idx, valid = _attention_case(device)
    keep = AttentionSelection(indices=idx, valid=valid).as_keep_mask(v.shape[1])
    outs = []
    for form in ("sampled", "dense"):
        attn.zero_grad()
        qs, vs = q.clone().requires_grad_(), v.clone().requires_grad_()
        out = (attn.forward_sampled(qs, vs + pos, vs, indices=idx, valid=valid, keys_from_values=True)
               if form == "sampled" else attn(qs, vs + pos, vs, keep=keep))
        (out * torch.linspace(-1, 1, out.numel(), device=device).view(out.shape)).sum().backward()
        outs.append([out.detach(), qs.grad, vs.grad, attn.in_proj_weight.grad.clone()])
    err = max(rel_err(a, b) for a, b in zip(*outs))
    check("sampled == dense (values, gradients)", err < 1e-4, err, "relative error < 1e-4 (fp32)")
    # bf16 autocast against fp32, same sets
    with torch.no_grad():
        ref = attn.forward_sampled(q, v + pos, v, indices=idx, valid=valid)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = attn.forward_sampled(q, v + pos, v, indices=idx, valid=valid)
    err = rel_err(low, ref)
    check("bf16 vs fp32 attention (same sets)", err < BF16_TOLERANCE, err, f"relative error < {BF16_TOLERANCE}")
    # a model: the same seed twice; bf16 against fp32; no host synchronisation in forward
    preset, size = ("tiny", 64) if args.small else ("hiera-s", 512)
    model = build(preset, device, **({"num_layers": 3, "num_queries": 4} if args.small else {})).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 255
    gen = lambda: torch.Generator(device=device).manual_seed(7)  # noqa: E731
    with torch.inference_mode():
        a = model(x, ["nodule"], generator=gen(), return_sampling=True)
        b = model(x, ["nodule"], generator=gen(), return_sampling=True)
        same_sets = all(torch.equal(s.keep, t.keep) for s, t in zip(a.sampling, b.sampling))
        check("same seed, same sets and logits", same_sets and torch.equal(a.logits, b.logits),
              rel_err(a.logits, b.logits), "sets equal, logits equal")
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(x, ["nodule"], generator=gen())
        agree = float(((low.logits > 0) == (a.logits > 0)).double().mean())
        check(f"bf16 vs fp32 {preset} masks (own draws)", agree > 0.95, agree,
              "pixels agreeing > 0.95 (random weights: logits near 0; the sets may differ)")
        if device.type == "cuda":
            g = gen()
            try:
                torch.cuda.set_sync_debug_mode("error")
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    model(x, ["nodule"], generator=g)  # text encoder, image encoder, decoder, PiGMA
                error = None
            except RuntimeError as e:
                error = str(e).splitlines()[0]
            finally:
                torch.cuda.set_sync_debug_mode(0)
            check("no host sync in forward", error is None, error, "set_sync_debug_mode('error') raises nothing")
        else:
            check("no host sync in forward", True, "skipped: needs CUDA", "set_sync_debug_mode is CUDA-only")
    if device.type == "cpu":  # the Triton kernels, through the interpreter, on the same case
        with env(BOLTZFORMER_TRITON="interpret", BOLTZFORMER_CPU_KERNELS="0"), torch.no_grad():
            tri = attn.forward_sampled(q, v + pos, v, indices=idx, valid=valid)
        check("Triton (interpreter) == PyTorch", rel_err(tri, ref) < 1e-4, rel_err(tri, ref), "relative error < 1e-4")
    return rows


def _images(B, size, device):
    return torch.rand(B, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 255


def section_inference(args, device) -> list[dict]:
    rows = []
    presets, size, batches = (["tiny"], 64, [1, 2]) if args.small else (["hiera-s", "focal-l"], 1024, [1, 8, 32])
    for preset in presets:
        model = build(preset, device).eval()
        for B in batches:
            x, prompts = _images(B, size, device), ["nodule"] * B
            gen = torch.Generator(device=device).manual_seed(0)
            def step():
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                    model(x, prompts, generator=gen)
            try:
                sec = timed(step, device, repeat=1 if args.small else 3)
                rows.append({"preset": preset, "size": size, "batch": B, "images_per_s": B / sec, "ms": 1e3 * sec})
            except torch.OutOfMemoryError as e:
                rows.append({"preset": preset, "size": size, "batch": B, "error": f"out of memory: {e}"[:200]})
            print(rows[-1], flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device):
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def section_train(args, device) -> list[dict]:
    rows = []
    presets, size, B = (["tiny"], 64, 2) if args.small else (["hiera-s", "focal-l"], 1024, 4)
    for preset in presets:
        for impl in ("efficient", "reference"):
            model = build(preset, device, impl).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            x, prompts = _images(B, size, device), ["nodule"] * B
            target = (torch.rand(B, 1, size, size, generator=torch.Generator().manual_seed(1)) > 0.99).float().to(device)
            gen = torch.Generator(device=device).manual_seed(0)
            def step():
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = model(x, prompts, generator=gen, return_aux=True)
                    logits = F.interpolate(out.logits.float(), size=(size, size), mode="bilinear")
                    loss = F.binary_cross_entropy_with_logits(logits, target)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            try:
                step()  # warm-up (and AdamW's state)
                _peak_reset(device)
                sec = timed(step, device, repeat=1 if args.small else 2, warmup=0)
                rows.append({"preset": preset, "impl": impl, "size": size, "batch": B, "step_s": sec,
                             "peak_gb": _peak_gb(device)})
            except torch.OutOfMemoryError as e:
                rows.append({"preset": preset, "impl": impl, "size": size, "batch": B, "error": f"out of memory: {e}"[:200]})
            print(rows[-1], flush=True)
            del model, opt
            _peak_reset(device)
    return rows


class _Replay(BoltzmannSampler):
    """The sets another decoder drew, as keep masks."""

    def __init__(self, keeps):
        super().__init__()
        self.keeps = keeps

    def forward(self, logits, layer, num_heads, *, generator=None, return_probs=False):
        keep = self.keeps[layer] if layer < len(self.keeps) else None
        return AttentionSelection(keep=keep, temperature=1.0 / (1 + layer))


def section_decoder(args, device) -> list[dict]:
    rows = []
    preset, size = ("tiny", 64) if args.small else ("hiera-s", 1024)
    ours = build(preset, device).eval()
    ref = build(preset, device, "reference").eval()
    ref.load_state_dict(ours.state_dict())
    x = _images(1, size, device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        feats = ours.encode_image(x)
        text = ours.text_encoder(["nodule"], device)
    inputs = ([m.float() for m in feats.multi_scale], feats.mask_features.float(), text)
    with torch.inference_mode():  # fp32, the same sets: the reference replays ours
        a = ours.decoder(*inputs, generator=torch.Generator(device=device).manual_seed(0), return_sampling=True)
        sampler, ref.decoder.sampler = ref.decoder.sampler, _Replay([s.keep for s in a.sampling])
        b = ref.decoder(*inputs)
        ref.decoder.sampler = sampler
    rows.append({"part": "same outputs (fp32, same sets)", "max_abs_diff": float((a.query_logits - b.query_logits).abs().max())})
    print(rows[-1], flush=True)
    for impl, model in (("efficient", ours), ("reference", ref)):
        gen = torch.Generator(device=device).manual_seed(0)
        def step():
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                model.decoder(*inputs, generator=gen)
        rows.append({"part": f"decoder eval bf16 ({impl})", "ms": 1e3 * timed(step, device, repeat=1 if args.small else 5)})
        print(rows[-1], flush=True)
    eff, refm = rows[-2]["ms"], rows[-1]["ms"]
    rows.append({"part": "speed-up (reference / efficient)", "ratio": refm / eff})
    return rows


def section_attention(args, device) -> list[dict]:
    import boltzformer.model.attention as attention

    rows = []
    C, H, Q = (32, 4, 5) if args.small else (512, 8, 101)
    sizes = [128, 256] if args.small else [1024, 2048]
    d = C // H
    for size in sizes:
        N = (size // 8) ** 2
        g = torch.Generator().manual_seed(1)
        with device:
            attn = MultiHeadAttention(C, H)
        query, memory, pos = (torch.randn(1, T, C, generator=g).to(device) for T in (Q, N, N))
        logits = torch.randn(1, Q, N, generator=g).to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            w, b = attn.in_proj_weight, attn.in_proj_bias
            q = F.linear(query, w[:C], b[:C])
            k, v = F.linear(memory + pos, w[C:2 * C], b[C:2 * C]), F.linear(memory, w[2 * C:], b[2 * C:])
            idx, valid = sample_token_indices(logits, 1.0, args.ratio, generator=torch.Generator(device=device).manual_seed(2), sets=H)
            n = idx.shape[-1]
            qh, kh, vh = (t.view(1, -1, H, d).transpose(1, 2) for t in (q, k, v))
            keep = torch.zeros(1, Q, H, N, dtype=torch.bool, device=device).scatter_(-1, idx, True).transpose(1, 2)
            forms = {
                "full SDPA (attention part)": lambda: F.scaled_dot_product_attention(qh, kh, vh),
                "SDPA with the set as a mask": lambda: F.scaled_dot_product_attention(qh, kh, vh, attn_mask=keep),
                "sampled (attention part)": lambda: sampled_attention_rows(
                    q.reshape(Q * H, d), k.reshape(N * H, d), v.reshape(N * H, d), rows=idx.reshape(-1, n),
                    valid=valid.reshape(-1, n), heads=H, per_batch=Q * H, stride=N),
                "layer full": lambda: attn(query, memory + pos, memory),
                "layer sampled, folded": lambda: attn.forward_sampled(query, memory + pos, memory, indices=idx.transpose(1, 2),
                                                                      valid=valid.transpose(1, 2)),
                "layer sampled, projected": lambda: attn.forward_sampled(query, memory + pos, memory, indices=idx.transpose(1, 2),
                                                                         valid=valid.transpose(1, 2)),
            }
            for form, fn in forms.items():
                fold = {"layer sampled, folded": True, "layer sampled, projected": False}.get(form)
                saved = attention._fold
                if fold is not None:
                    attention._fold = lambda *a, fold=fold: fold
                try:
                    with env(BOLTZFORMER_TRITON="interpret", BOLTZFORMER_CPU_KERNELS="0") if device.type == "cpu" and "sampled" in form else contextlib.nullcontext():
                        sec = timed(fn, device, repeat=1 if args.small else 10, warmup=1 if args.small else 3)
                    rows.append({"size": size, "tokens": N, "draws": n, "form": form, "ms": 1e3 * sec})
                except Exception as e:  # one form's failure leaves the others
                    rows.append({"size": size, "tokens": N, "form": form, "error": repr(e)[:300]})
                finally:
                    attention._fold = saved
                print(rows[-1], flush=True)
        full = {r["form"]: r.get("ms") for r in rows if r["size"] == size}
        for r in rows:
            if r["size"] == size and r.get("ms"):
                base = full["layer full"] if r["form"].startswith("layer") else full["full SDPA (attention part)"]
                r["vs_full"] = r["ms"] / base if base else None
    return rows


SECTIONS = {"tests": section_tests, "inference": section_inference, "train": section_train,
            "decoder": section_decoder, "attention": section_attention}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--small", action="store_true", help="tiny sizes: checks the script, measures nothing")
    p.add_argument("--dry-run", action="store_true", help="--device cpu --small")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    p.add_argument("--json", default="results/gpu_check.json")
    args = p.parse_args()
    if args.dry_run:
        args.device, args.small = "cpu", True
    if not 0 < args.ratio <= 1:
        p.error(f"--ratio must be in (0, 1], got {args.ratio}")
    if args.budget_scale <= 0:
        p.error(f"--budget-scale must be > 0, got {args.budget_scale}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible (use --dry-run to check the script on CPU)", file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(0)
    result = {
        "machine": machine(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "triton": triton_usable(torch.zeros(1, device=device)) if device.type == "cuda" else "interpreter (dry run)",
        "small": args.small,
        "command": " ".join(sys.argv),
        "bf16_tolerance": BF16_TOLERANCE,
        "sections": {},
    }
    for name in args.sections:
        started = time.perf_counter()
        try:
            with budget(BUDGETS[name] * args.budget_scale):
                rows = SECTIONS[name](args, device)
            entry = {"rows": rows}
        except Exception as e:  # the section's error is recorded; the next sections still run
            entry = {"error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-2000:]}
            print(f"[{name}] failed: {entry['error']}", flush=True)
        entry["seconds"] = time.perf_counter() - started
        result["sections"][name] = entry
        write_json(result, args.json)
    print(f"\n# GPU check on {result['device']} ({'small sizes: checks the script only' if args.small else 'measured'})")
    for name, entry in result["sections"].items():
        print(f"\n## {name} ({entry['seconds']:.0f} s)")
        if "error" in entry:
            print(f"error: {entry['error']}")
        rows = entry.get("rows", [])
        if rows:
            columns = list(dict.fromkeys(k for r in rows for k in r))
            print(table(rows, columns))
    failed = [r["check"] for r in result["sections"].get("tests", {}).get("rows", []) if not r["ok"]]
    print(f"\nwrote {args.json}" + (f"; failed checks: {failed}" if failed else ""))


if __name__ == "__main__":
    main()
