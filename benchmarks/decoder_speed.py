"""The Boltzmann decoder alone: ours against the reference code's formulation, time and peak memory.

    python benchmarks/decoder_speed.py --json docs/results/speed_decoder_cpu.json --plot docs/speed_decoder.png
    python benchmarks/decoder_speed.py --quick          # smoke run, under a minute

Three parts, all on random inputs shaped like the preset's pixel-decoder outputs at each input size
(B = 1, a 9-token prompt), ``torch.set_num_threads(2)`` by default:

1. ``sizes``: for each preset and input size, eval (``torch.inference_mode``) and train step
   (forward with deep supervision, backward), ours (``impl="efficient"``) and the reference
   formulation (``impl="reference"``: ``reference_decoder.py`` beside this script), same weights;
2. ``ratios``: at one size, the decoder's eval time as the sampled fraction goes 5..100 % and with
   ``attention="full"``, both formulations;
3. ``attention``: one cross-attention's scores + weighted sum only (no projections), our sampled
   form at each fraction against dense attention over every token (``full``) and the reference's
   dense attention with the boolean mask, and the K/V projections of the same layer for scale.

Every measurement runs in a fresh process (so that its peak memory is its own: the peak resident
set size during the calls, reset with ``/proc/self/clear_refs`` after the setup, minus the resident
size before the first call; RLIMIT_AS makes running out of memory an error, not a kill) and ours and the reference alternate, process after process, for
``--rounds`` rounds: the machine is shared, so the ratios of medians taken in the same run are the
numbers to read, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table, write_json  # noqa: E402

_SETUP = r"""
import json, resource, sys, time, torch
resource.setrlimit(resource.RLIMIT_AS, ({mem_limit}, {mem_limit}))
torch.set_num_threads({threads})
sys.path.insert(0, {bench_dir!r})
import boltzformer
from boltzformer.model.text import TextFeatures
from reference_decoder import build_model  # the preset with either decoder (impl="efficient" or "reference")

def _status_gb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 2**20  # kB -> GB

def rss_gb():
    # reset the peak (VmHWM) to the current resident size, so that the peak counts the measured
    # calls only, not building the model
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_gb("VmRSS:")

def peak_gb():
    return _status_gb("VmHWM:")

torch.manual_seed(0)
"""

_DECODER_CHILD = _SETUP + r"""
model = build_model({preset!r}, {impl!r}, **{overrides!r})
dec, pd, channels_last = model.decoder, model.pixel_decoder, model.channels_last
del model
S, B, L = {size}, 1, 9
g = torch.Generator().manual_seed(1)
multi_scale = [torch.randn(B, pd.conv_dim, S // s, S // s, generator=g) for s in (32, 16, 8)]
mask_features = torch.randn(B, pd.mask_dim, S // 4, S // 4, generator=g)
if channels_last:  # in the memory format the preset's pixel decoder delivers (ModelConfig.channels_last)
    multi_scale = [m.contiguous(memory_format=torch.channels_last) for m in multi_scale]
    mask_features = mask_features.contiguous(memory_format=torch.channels_last)
tokens = torch.randn(B, L, dec.hidden_dim, generator=g)
text = TextFeatures(tokens=tokens, padding_mask=torch.zeros(B, L, dtype=torch.bool), pooled=tokens[:, -1])
train = {train!r}
dec.train(train)
if train:
    for t in multi_scale + [mask_features, tokens]:
        t.requires_grad_()
    target = (torch.rand(B, 1, S // 4, S // 4, generator=g) > 0.99).float()

def step():
    gen = torch.Generator().manual_seed(2)
    if not train:
        with torch.inference_mode():
            dec(multi_scale, mask_features, text, generator=gen)
        return
    out = dec(multi_scale, mask_features, text, generator=gen, return_aux=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.query_logits.mean(1, keepdim=True), target)
    loss = loss + sum(torch.nn.functional.binary_cross_entropy_with_logits(a, target) for a in out.aux_logits)
    loss.backward()
    dec.zero_grad(set_to_none=True)
    for t in multi_scale + [mask_features, tokens]:
        t.grad = None

base = rss_gb()
times, cpu = [], []
for i in range({repeat} + 1):
    t, c = time.perf_counter(), time.process_time()
    step()
    if i:  # the first call warms up
        cpu.append(time.process_time() - c)
        times.append(time.perf_counter() - t)
print(json.dumps({{"times": times, "cpu": cpu, "peak_gb": peak_gb() - base}}))
"""

_ATTENTION_CHILD = _SETUP + r"""
import math
import torch.nn.functional as F
from boltzformer.model.attention import MultiHeadAttention, sampled_attention_rows
from reference_decoder import reference_keep_mask
from boltzformer.model.sampling import sample_token_indices
C, H, Q, N, B = {hidden}, {heads}, {queries}, {tokens}, 1
d = C // H
attn = MultiHeadAttention(C, H)
g = torch.Generator().manual_seed(1)
query, memory, pos = torch.randn(B, Q, C, generator=g), torch.randn(B, N, C, generator=g), torch.randn(B, N, C, generator=g)
logits = torch.randn(B, Q, N, generator=g)
form, ratio = {form!r}, {ratio!r}
w, b = attn.in_proj_weight, attn.in_proj_bias
with torch.inference_mode():
    q = F.linear(query, w[:C], b[:C])
    k = F.linear(memory + pos, w[C:2 * C], b[C:2 * C])
    v = F.linear(memory, w[2 * C:], b[2 * C:])
    key = memory + pos
    if form == "layer full":  # the whole attention: projections, dense attention over every token, output
        fn = lambda: attn(query, key, memory)
    elif form == "layer sampled":  # the same over the drawn tokens (projections folded where that pays)
        idx, valid = sample_token_indices(logits, 1.0, ratio, generator=g, sets=H)
        fn = lambda: attn.forward_sampled(query, key, memory, indices=idx.transpose(1, 2), valid=valid.transpose(1, 2))
    elif form == "sampled":
        idx, valid = sample_token_indices(logits, 1.0, ratio, generator=g, sets=H)  # B x Q x H x n
        n = idx.shape[-1]
        rows = ((idx + (torch.arange(B) * N).view(B, 1, 1, 1)) * H + torch.arange(H).view(1, 1, H, 1)).view(-1, n)
        valid = valid.view(-1, n)
        q2, k2, v2 = q.view(B * Q * H, d), k.view(B * N * H, d), v.view(B * N * H, d)
        fn = lambda: sampled_attention_rows(q2, k2, v2, rows=rows, valid=valid)
    else:
        qh, kh, vh = (t.view(B, -1, H, d).transpose(1, 2) for t in (q, k, v))  # B x H x T x d
        mask = None
        if form == "masked":
            mask, _ = reference_keep_mask(logits, 1.0, ratio, H, generator=g)
        if form == "projections":
            fn = lambda: (F.linear(memory + pos, w[C:2 * C], b[C:2 * C]), F.linear(memory, w[2 * C:], b[2 * C:]))
        else:
            fn = lambda: F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    base = rss_gb()
    times, cpu = [], []
    for i in range({repeat} + 1):
        t, c = time.perf_counter(), time.process_time()
        fn()
        if i:
            cpu.append(time.process_time() - c)
            times.append(time.perf_counter() - t)
print(json.dumps({{"times": times, "cpu": cpu, "peak_gb": peak_gb() - base}}))
"""


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _alternate(codes: dict[str, str], rounds: int) -> dict[str, dict]:
    """Run each labelled job ``rounds`` times, alternating; median time and peak per label."""
    runs: dict[str, list[dict]] = {label: [] for label in codes}
    for _ in range(rounds):
        for label, code in codes.items():
            runs[label].append(_child(code))
    out = {}
    for label, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out[label] = {"error": rs[0]["error"]}
            continue
        out[label] = {
            "seconds": statistics.median(t for r in ok for t in r["times"]),
            "cpu_seconds": statistics.median(t for r in ok for t in r["cpu"]),
            "peak_gb": statistics.median(r["peak_gb"] for r in ok),
        }
    return out


def _ratio(a: dict, b: dict, key: str) -> float | None:
    if key in a and key in b and a[key] > 0:
        return b[key] / a[key]
    return None


def bench_sizes(args, common: dict) -> list[dict]:
    rows = []
    for preset in args.presets:
        for size in args.sizes:
            for train in (False, True):
                codes = {
                    impl: _DECODER_CHILD.format(preset=preset, impl=impl, size=size, train=train, overrides={}, **common)
                    for impl in ("efficient", "reference")
                }
                r = _alternate(codes, args.rounds)
                ours, ref = r["efficient"], r["reference"]
                rows.append({
                    "preset": preset, "size": size, "job": "train step" if train else "eval",
                    "ours_s": ours.get("seconds"), "ref_s": ref.get("seconds"),
                    "speedup": _ratio(ours, ref, "seconds"), "cpu_speedup": _ratio(ours, ref, "cpu_seconds"),
                    "ours_gb": ours.get("peak_gb"), "ref_gb": ref.get("peak_gb"),
                    "memory_ratio": None if _ratio(ours, ref, "peak_gb") is None else 1 / _ratio(ours, ref, "peak_gb"),
                    "error": ours.get("error") or ref.get("error"),
                })
                print(rows[-1], flush=True)
    return rows


def bench_ratios(args, common: dict) -> list[dict]:
    rows = []
    settings = [("full", 1.0)] + [("boltzmann", r) for r in args.ratios]
    for attention, ratio in settings:
        overrides = {"attention": attention, "sample_ratio": ratio}
        codes = {
            impl: _DECODER_CHILD.format(preset=args.sweep_preset, impl=impl, size=args.sweep_size, train=False,
                                        overrides=overrides, **common)
            for impl in ("efficient", "reference")
        }
        r = _alternate(codes, args.rounds)
        rows.append({
            "attention": attention, "ratio": ratio,
            "ours_s": r["efficient"].get("seconds"), "ref_s": r["reference"].get("seconds"),
            "speedup": _ratio(r["efficient"], r["reference"], "seconds"),
            "cpu_speedup": _ratio(r["efficient"], r["reference"], "cpu_seconds"),
            "ours_gb": r["efficient"].get("peak_gb"), "ref_gb": r["reference"].get("peak_gb"),
            "error": r["efficient"].get("error") or r["reference"].get("error"),
        })
        print(rows[-1], flush=True)
    return rows


def bench_attention(args, common: dict) -> list[dict]:
    """One cross-attention layer of the hiera-s decoder (hidden 512, 8 heads, 101 queries) at the
    largest level of each input size (N = (size / 8)^2 tokens)."""
    rows = []
    for size in args.attention_sizes:
        N = (size // 8) ** 2
        fmt = dict(hidden=512, heads=8, queries=101, tokens=N, **common)
        codes = {"full": _ATTENTION_CHILD.format(form="full", ratio=1.0, **fmt),
                 "projections": _ATTENTION_CHILD.format(form="projections", ratio=1.0, **fmt),
                 "layer full": _ATTENTION_CHILD.format(form="layer full", ratio=1.0, **fmt)}
        for ratio in args.ratios:
            codes[f"sampled {ratio}"] = _ATTENTION_CHILD.format(form="sampled", ratio=ratio, **fmt)
            codes[f"masked {ratio}"] = _ATTENTION_CHILD.format(form="masked", ratio=ratio, **fmt)
            codes[f"layer sampled {ratio}"] = _ATTENTION_CHILD.format(form="layer sampled", ratio=ratio, **fmt)
        r = _alternate(codes, args.rounds)
        for label, res in r.items():
            form, _, ratio = label.rpartition(" ")
            if not form or not ratio[:1].isdigit():
                form, ratio = label, ""
            # the attention part against full attention's; a whole layer against a whole dense layer
            base = r["layer full"] if form.startswith("layer") else r["full"]
            full, full_cpu = base.get("seconds"), base.get("cpu_seconds")
            rows.append({
                "size": size, "tokens": N, "form": form, "ratio": float(ratio) if ratio else None,
                "ms": None if "seconds" not in res else 1e3 * res["seconds"],
                "vs_full": None if "seconds" not in res or not full else res["seconds"] / full,
                "cpu_vs_full": None if "cpu_seconds" not in res or not full_cpu else res["cpu_seconds"] / full_cpu,
                "error": res.get("error"),
            })
            print(rows[-1], flush=True)
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for preset in sorted({r["preset"] for r in result["sizes"]}):
        for impl, key, style in (("ours", "ours_s", "-o"), ("reference", "ref_s", "--s")):
            pts = [(r["size"], r[key]) for r in result["sizes"] if r["preset"] == preset and r["job"] == "eval" and r[key]]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{preset} {impl}")
    ax.set(xscale="log", yscale="log", xlabel="input size (px)", ylabel="decoder eval time (s)",
           title="decoder time vs input size")
    ax.set_xticks(result["args"]["sizes"], [str(s) for s in result["args"]["sizes"]])
    from matplotlib.ticker import NullLocator

    ax.xaxis.set_minor_locator(NullLocator())  # no 3x10^2-style minor labels
    ax.legend(fontsize=7)
    ax = axes[1]
    sampled = [r for r in result["ratios"] if r["attention"] == "boltzmann"]
    full = [r for r in result["ratios"] if r["attention"] == "full"]
    for key, style, label in (("ours_s", "-o", "ours"), ("ref_s", "--s", "reference")):
        pts = [(100 * r["ratio"], r[key]) for r in sampled if r[key]]
        if pts:
            line = ax.plot(*zip(*pts), style, label=f"{label}, sampled")[0]
            if full and full[0][key]:
                ax.axhline(full[0][key], color=line.get_color(), ls=":", label=f"{label}, full attention")
    ax.set(xlabel="sampled fraction (%)", ylabel="decoder eval time (s)",
           title=f"{result['args']['sweep_preset']} decoder at {result['args']['sweep_size']}")
    ax.legend(fontsize=7)
    ax = axes[2]
    for size in sorted({r["size"] for r in result["attention"]}):
        for form, style, label in (("sampled", "-o", "ours, scores + sum"), ("masked", "--s", "dense + mask (reference)"),
                                   ("layer sampled", "-.^", "ours, whole layer / dense layer")):
            pts = [(100 * r["ratio"], r["vs_full"]) for r in result["attention"]
                   if r["size"] == size and r["form"] == form and r["vs_full"]]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{size}px: {label}")
    ax.axhline(1.0, color="grey", ls=":", label="full attention")
    ax.axhline(0.25, color="red", ls=":", lw=0.8, label="target 0.25")
    ax.set(xlabel="sampled fraction (%)", ylabel="time / full attention",
           title="cross-attention scores + weighted sum")
    ax.legend(fontsize=7)
    fig.suptitle(f"{result['machine']['cpu']}, {result['threads']} threads, {result['machine']['date']}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "hiera-s"])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5, 1.0])
    p.add_argument("--sweep-preset", default="hiera-s")
    p.add_argument("--sweep-size", type=int, default=1024)
    p.add_argument("--attention-sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--parts", nargs="+", default=["sizes", "ratios", "attention"], choices=["sizes", "ratios", "attention"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="timed calls per process (after one warm-up call)")
    p.add_argument("--rounds", type=int, default=2, help="processes per measurement, ours and reference alternating")
    p.add_argument("--mem-limit-gb", type=float, default=20.0)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny preset, small sizes, one round")
    p.add_argument("--json", default=None)
    p.add_argument("--update", action="store_true", help="keep the parts of an existing --json that this run skips")
    p.add_argument("--plot", default=None, help="PNG of the three parts (needs matplotlib)")
    args = p.parse_args()
    if args.quick:
        args.presets, args.sizes, args.ratios = ["tiny"], [256], [0.1]
        args.sweep_preset, args.sweep_size, args.attention_sizes = "tiny", 256, [256]
        args.repeat, args.rounds = 1, 1
    common = dict(threads=args.threads, repeat=args.repeat, mem_limit=int(args.mem_limit_gb * 2**30),
                  bench_dir=str(Path(__file__).resolve().parent))
    result = {"machine": machine(), "threads": args.threads, "args": vars(args), "sizes": [], "ratios": [], "attention": []}
    result["machine"]["torch_threads"] = args.threads
    if args.update and args.json and Path(args.json).is_file():
        old = json.loads(Path(args.json).read_text())
        for part in ("sizes", "ratios", "attention"):
            if part not in args.parts:
                result[part] = old.get(part, [])
        result["args"] = {**old.get("args", {}), **{k: v for k, v in vars(args).items() if k in ("attention_sizes", "ratios")}}
    if "sizes" in args.parts:
        result["sizes"] = bench_sizes(args, common)
        print(table(result["sizes"], ["preset", "size", "job", "ours_s", "ref_s", "speedup", "cpu_speedup", "ours_gb", "ref_gb", "memory_ratio", "error"]))
    if "ratios" in args.parts:
        result["ratios"] = bench_ratios(args, common)
        print(table(result["ratios"], ["attention", "ratio", "ours_s", "ref_s", "speedup", "cpu_speedup", "ours_gb", "ref_gb", "error"]))
    if "attention" in args.parts:
        result["attention"] = bench_attention(args, common)
        print(table(result["attention"], ["size", "tokens", "form", "ratio", "ms", "vs_full", "cpu_vs_full", "error"]))
    if args.json:
        write_json(result, args.json)
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
