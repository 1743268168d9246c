"""Train a preset on a dataset and report Dice by target size on its test split.

    python benchmarks/train_eval.py --data ../shared/data/lidc_lung_nodule --max-steps 400 \
        --out runs/lidc --json docs/results/lung_nodules_tiny_aug.json

Prints a table and writes JSON with the machine, the date and the wall times. The split keeps
patients apart (``meta.json``'s ``patient`` field).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table, write_json  # noqa: E402

from boltzformer.model.checkpoint import load_checkpoint  # noqa: E402
from boltzformer.config import TrainConfig, get_preset  # noqa: E402
from boltzformer.data.loading import open_dataset  # noqa: E402
from boltzformer.evaluate import evaluate_model  # noqa: E402
from boltzformer.train.runner import TrainJob, run_training  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="start from this checkpoint (fine-tuning)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--json", required=True, help="results JSON")
    args = p.parse_args()

    overrides = {"image_size": args.image_size} if args.image_size else {}
    model_cfg = get_preset(args.preset, **overrides)
    tc = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     val_every=max(1, args.max_steps // 4), warmup_steps=min(50, args.max_steps // 10 or 1))
    t0 = time.perf_counter()
    last = run_training(TrainJob(model=model_cfg, train=tc, data=args.data, out=Path(args.out), data_seed=args.seed,
                                  init=Path(args.init) if args.init else None))
    train_s = time.perf_counter() - t0
    model = load_checkpoint(last)
    rows, results = [], {}
    for split in ("train", "test"):
        report = evaluate_model(model, open_dataset(args.data, split, seed=args.seed), seed=args.seed)
        report.pop("samples")
        results[split] = report
        rows.append({"split": split, "n": report["n"], "dice": report["dice"], **{f"dice {b}": report["dice_by_size"][b] for b in ("tiny", "small", "large")},
                     **{f"n {b}": report["n_by_size"][b] for b in ("tiny", "small", "large")}, "failure rate": report["failure_rate"]})
    cols = ["split", "n", "dice", "dice tiny", "n tiny", "dice small", "n small", "dice large", "n large", "failure rate"]
    print(table(rows, cols))
    write_json({"machine": machine(), "data": args.data, "preset": args.preset, "image_size": model_cfg.image_size,
                "max_steps": args.max_steps, "init": args.init, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                "train_seconds": round(train_s, 1), "results": results}, args.json)


if __name__ == "__main__":
    main()
