"""Time and peak memory of the paper-size presets at 1024 x 1024, batch 1, on this machine.

    python benchmarks/paper_size.py --presets hiera-s focal-l --threads 2 --json docs/results/paper_size_cpu.json
    python benchmarks/paper_size.py --presets hiera-s --jobs train --freeze backbone pixel_decoder

Each measurement runs in a fresh process (so peak memory is that of one job): an eval forward
(``torch.inference_mode``) and a train step (forward, Dice + BCE loss with deep supervision,
backward, AdamW step), with random weights. Peak memory is the process's maximum resident set size.
The time is the fastest of ``--repeat`` calls (the first pays for allocation).

As the CLI does, the processes call ``boltzformer.runtime.keep_freed_memory()`` (``--allocator
default`` leaves glibc as it is). ``--freeze`` leaves parts untrained (``train --freeze``), as when
fine-tuning on a pretrained encoder; ``--channels-last`` converts the model and the input to
channels-last memory (faster oneDNN convolutions). Every row of the JSON names its settings, and
``--update`` adds rows to an existing file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table, write_json  # noqa: E402

_CHILD = r"""
import json, resource, sys, time, torch
# fail with an error instead of being killed if memory runs out (the machine has 24 GB)
resource.setrlimit(resource.RLIMIT_AS, ({mem_limit}, {mem_limit}))
torch.set_num_threads({threads})
import boltzformer
from boltzformer.runtime import keep_freed_memory
from boltzformer.train.module import SegmentationLoss
if {keep!r}:
    assert keep_freed_memory()
torch.manual_seed(0)
model = boltzformer.build_model({preset!r}, **{overrides!r})
x = torch.rand(1, 3, {size}, {size}) * 255
for part in {freeze!r}:
    getattr(model, part).requires_grad_(False)
if {channels_last!r}:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
prompts = ["lung nodule in CT scan"]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
if {train!r}:
    model.train()
    for part in {freeze!r}:
        getattr(model, part).eval()
    loss_fn = SegmentationLoss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    target = (torch.rand(1, 1, {size}, {size}) > 0.99).float()
    for _ in range({repeat}):
        t = time.perf_counter()
        out = model(x, prompts, return_aux=True)
        loss = loss_fn(out.logits, target) + sum(loss_fn(a, target) for a in out.aux_logits) / len(out.aux_logits)
        opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - t)
else:
    model.eval()
    with torch.inference_mode():
        for _ in range({repeat}):
            t = time.perf_counter()
            model(x, prompts)
            times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": min(times), "peak_gb": peak / 2**20, "model_gb": base / 2**20}}))
"""


def run(preset: str, train: bool, *, size: int, threads: int, repeat: int, overrides: dict, keep: bool = True,
        freeze: tuple[str, ...] = (), channels_last: bool = False) -> dict:
    code = _CHILD.format(preset=preset, train=train, size=size, threads=threads, repeat=repeat, overrides=overrides,
                         mem_limit=22 * 2**30, keep=keep, freeze=tuple(freeze), channels_last=channels_last)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["hiera-s", "focal-l"])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--jobs", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model override, e.g. attention=full")
    p.add_argument("--allocator", default="keep", choices=["keep", "default"],
                   help="keep: boltzformer.runtime.keep_freed_memory() as the CLI does; default: glibc as it is")
    p.add_argument("--freeze", nargs="*", default=[], choices=["backbone", "pixel_decoder", "text_encoder"],
                   help="parts left untrained in the train step")
    p.add_argument("--channels-last", action="store_true", help="model and input in channels-last memory format")
    p.add_argument("--json", default=None)
    p.add_argument("--update", action="store_true", help="add the rows to an existing --json")
    args = p.parse_args()
    overrides = {k: json.loads(v) if v[:1] in "0123456789[{tf" else v for k, v in (s.split("=", 1) for s in args.set)}
    settings = {"allocator": args.allocator, "weights_channels_last": args.channels_last, "overrides": overrides}
    rows = []
    for preset in args.presets:
        for job in args.jobs:
            train = job == "train"
            r = run(preset, train, size=args.size, threads=args.threads, repeat=args.repeat, overrides=overrides,
                    keep=args.allocator == "keep", freeze=tuple(args.freeze) if train else (),
                    channels_last=args.channels_last)
            freeze = "+".join(args.freeze) if train and args.freeze else "-"
            rows.append({"preset": preset, "job": "train step" if train else "eval", "freeze": freeze, **settings, **r})
            print(rows[-1], flush=True)
    print(table(rows, ["preset", "job", "freeze", "allocator", "weights_channels_last", "seconds", "peak_gb", "model_gb", "error"]))
    if args.json:
        old = []
        if args.update and Path(args.json).exists():
            old = json.loads(Path(args.json).read_text())["rows"]
        write_json({"machine": machine(), "size": args.size, "threads": args.threads, "rows": old + rows}, args.json)


if __name__ == "__main__":
    main()
