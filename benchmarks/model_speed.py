"""The whole model: ours against the reference decoder formulation, and where the encoder's time goes.

    python benchmarks/model_speed.py --json docs/results/speed_model_cpu.json
    python benchmarks/model_speed.py --quick          # smoke run, under a minute

Two parts, ``torch.set_num_threads(2)`` by default:

1. ``sizes``: for each preset and input size, an eval forward (``torch.inference_mode``) and a train
   step (forward with deep supervision, Dice + BCE, backward, AdamW step) of the whole model, built
   with ``impl="efficient"`` (ours) and ``"reference"`` (the reference code's decoder
   formulation), same weights. Every job runs in a fresh process with RLIMIT_AS; ours and the
   reference alternate for ``--rounds`` rounds (see ``decoder_speed.py``); medians and ratios.
2. ``encoder``: the image encoder (backbone) and pixel decoder of one preset at one size, eval:
   time, multiply-adds (``torch.utils.flop_counter``) and the GFLOP/s they reach, in float32, with
   channels-last memory, and under bf16 autocast; next to the ceiling of this CPU: a large fp32 and
   bf16 matrix product's GFLOP/s. Also the torch.profiler table of the float32 run's top operators.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table, write_json  # noqa: E402
from decoder_speed import _SETUP, _alternate, _child, _ratio  # noqa: E402

_MODEL_CHILD = _SETUP + r"""
from boltzformer.train.module import SegmentationLoss
model = build_model({preset!r}, {impl!r})
S = {size}
x = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(1)) * 255
prompts = ["lung nodule in CT scan"]
train = {train!r}
model.train(train)
if train:
    loss_fn = SegmentationLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = (torch.rand(1, 1, S, S, generator=torch.Generator().manual_seed(2)) > 0.99).float()

def step():
    gen = torch.Generator().manual_seed(3)
    if not train:
        with torch.inference_mode():
            model(x, prompts, generator=gen)
        return
    out = model(x, prompts, generator=gen, return_aux=True)
    loss = loss_fn(out.logits, target) + sum(loss_fn(a, target) for a in out.aux_logits) / len(out.aux_logits)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

base = rss_gb()
times, cpu = [], []
for i in range({repeat} + 1):
    t, c = time.perf_counter(), time.process_time()
    step()
    if i:
        cpu.append(time.process_time() - c)
        times.append(time.perf_counter() - t)
print(json.dumps({{"times": times, "cpu": cpu, "peak_gb": peak_gb() - base}}))
"""

_ENCODER_CHILD = _SETUP + r"""
import contextlib
from torch.utils.flop_counter import FlopCounterMode
from torch.profiler import profile

def best(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]

result = {{"ceiling": {{}}, "parts": [], "profile": ""}}
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    x, y = a.to(dtype), b.to(dtype)
    result["ceiling"][name] = 2 * 2048**3 / best(lambda: x @ y, {repeat}) / 1e9
model = boltzformer.build_model({preset!r}).eval()
S = {size}
image = torch.randn(1, 3, S, S)
with torch.inference_mode():
    feats = model.backbone(image)
    with FlopCounterMode(display=False) as fc:
        model.backbone(image)
    bb_flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        model.pixel_decoder(feats)
    pd_flops = fc.get_total_flops()
    for variant in ("fp32", "fp32 channels_last", "bf16 autocast", "bf16 autocast channels_last"):
        cl = variant.endswith("channels_last")
        img = image.contiguous(memory_format=torch.channels_last) if cl else image
        m = model.to(memory_format=torch.channels_last) if cl else model.to(memory_format=torch.contiguous_format)
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if variant.startswith("bf16") else contextlib.nullcontext
        with ctx():
            f = m.backbone(img)
            t_bb = best(lambda: m.backbone(img), {repeat})
            t_pd = best(lambda: m.pixel_decoder(f), {repeat})
        result["parts"].append({{"variant": variant, "backbone_s": t_bb, "backbone_gflops": bb_flops / t_bb / 1e9,
                                 "pixel_decoder_s": t_pd, "pixel_decoder_gflops": pd_flops / t_pd / 1e9}})
    model.to(memory_format=torch.contiguous_format)
    with profile() as prof:
        model.pixel_decoder(model.backbone(image))
    result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
result["backbone_gflop"] = bb_flops / 1e9
result["pixel_decoder_gflop"] = pd_flops / 1e9
print(json.dumps(result))
"""


def bench_sizes(args, common: dict) -> list[dict]:
    rows = []
    for preset in args.presets:
        for size in args.sizes:
            for train in (False, True):
                codes = {
                    impl: _MODEL_CHILD.format(preset=preset, impl=impl, size=size, train=train, **common)
                    for impl in ("efficient", "reference")
                }
                r = _alternate(codes, args.rounds)
                ours, ref = r["efficient"], r["reference"]
                mem = _ratio(ours, ref, "peak_gb")
                rows.append({
                    "preset": preset, "size": size, "job": "train step" if train else "eval",
                    "ours_s": ours.get("seconds"), "ref_s": ref.get("seconds"),
                    "speedup": _ratio(ours, ref, "seconds"), "cpu_speedup": _ratio(ours, ref, "cpu_seconds"),
                    "ours_gb": ours.get("peak_gb"), "ref_gb": ref.get("peak_gb"),
                    "memory_saved": None if mem is None else 1 - 1 / mem,
                    "error": ours.get("error") or ref.get("error"),
                })
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "hiera-s"])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--encoder-preset", default="hiera-s")
    p.add_argument("--encoder-size", type=int, default=1024)
    p.add_argument("--parts", nargs="+", default=["sizes", "encoder"], choices=["sizes", "encoder"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="timed calls per process (after one warm-up call)")
    p.add_argument("--rounds", type=int, default=2, help="processes per measurement, ours and reference alternating")
    p.add_argument("--mem-limit-gb", type=float, default=20.0)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny preset at 256, one round")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.presets, args.sizes, args.rounds = ["tiny"], [256], 1
        args.encoder_preset, args.encoder_size = "tiny", 256
    common = dict(threads=args.threads, repeat=args.repeat, mem_limit=int(args.mem_limit_gb * 2**30),
                  bench_dir=str(Path(__file__).resolve().parent))
    result = {"machine": machine(), "threads": args.threads, "args": vars(args), "sizes": [], "encoder": None}
    result["machine"]["torch_threads"] = args.threads
    if "sizes" in args.parts:
        result["sizes"] = bench_sizes(args, common)
        print(table(result["sizes"], ["preset", "size", "job", "ours_s", "ref_s", "speedup", "cpu_speedup",
                                      "ours_gb", "ref_gb", "memory_saved", "error"]))
    if "encoder" in args.parts:
        enc = _child(_ENCODER_CHILD.format(preset=args.encoder_preset, size=args.encoder_size,
                                           **{**common, "repeat": max(3, args.repeat)}))
        result["encoder"] = enc
        if "error" in enc:
            print("encoder:", enc["error"])
        else:
            print(f"ceiling: fp32 {enc['ceiling']['fp32']:.0f} GFLOP/s, bf16 {enc['ceiling']['bf16']:.0f} GFLOP/s; "
                  f"backbone {enc['backbone_gflop']:.0f} GFLOP, pixel decoder {enc['pixel_decoder_gflop']:.0f} GFLOP")
            print(table(enc["parts"], ["variant", "backbone_s", "backbone_gflops", "pixel_decoder_s", "pixel_decoder_gflops"]))
            print(enc["profile"])
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
