"""Does the agreement of K sampled passes tell when to trust a mask? Seeded K-pass evaluation of the
tiny preset on (a) the synthetic benchmark and (b) real data from shared/data.

    boltzformer demo --out /tmp/demo        # (a)'s checkpoint: /tmp/demo/run/last.ckpt
    python benchmarks/uncertainty.py --synthetic-checkpoint /tmp/demo/run/last.ckpt \\
        --data ../shared/data/lidc_lung_nodule,../shared/data/lgg_brain_flair,../shared/data/kvasir_small_polyp \\
        --max-steps 500 --out /tmp/uncertainty --json-dir docs/results

(a) evaluates the given synthetic checkpoint (without one, tiny is trained on the synthetic benchmark for
``--synthetic-steps``); (b) trains tiny on the train splits of ``--data`` together (patients kept apart,
as ``benchmarks/train_eval.py`` does) for ``--max-steps``, unless ``--checkpoint`` is given. Every test
split is evaluated twice: one pass (seed ``--seed``) and K passes (seeds seed..seed+K-1, the mean mask
scored, agreement recorded). Prints a table and writes ``uncertainty_synthetic.json`` and
``uncertainty_shared_data.json`` into ``--json-dir`` with the machine, the date and the wall times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine, table, write_json  # noqa: E402

from boltzformer.model.checkpoint import load_checkpoint  # noqa: E402
from boltzformer.config import TrainConfig, get_preset  # noqa: E402
from boltzformer.data.loading import open_dataset  # noqa: E402
from boltzformer.evaluate import SampleRecord, evaluate_model, summarize  # noqa: E402
from boltzformer.train.runner import TrainJob, run_training  # noqa: E402


def _train(data: str, out: Path, *, steps: int, batch_size: int, lr: float, seed: int) -> tuple[Path, float]:
    tc = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, seed=seed, val_every=max(1, steps // 4),
                     warmup_steps=min(50, steps // 10 or 1))  # fmt: skip
    t0 = time.perf_counter()
    last = run_training(TrainJob(model=get_preset("tiny"), train=tc, data=data, out=out, data_seed=seed, progress=False))
    return last, time.perf_counter() - t0


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    """A report without its per-sample list."""
    return {k: v for k, v in report.items() if k != "samples"}


def _evaluate(model, dataset, *, samples: int, seed: int, batch_size: int) -> dict[str, Any]:
    """One pass and K passes on one dataset, and the per-sample values of both."""
    t0 = time.perf_counter()
    one = evaluate_model(model, dataset, batch_size=batch_size, seed=seed)
    t1 = time.perf_counter()
    k = evaluate_model(model, dataset, batch_size=batch_size, seed=seed, samples=samples)
    t2 = time.perf_counter()

    def r(x: float | None, digits: int = 4) -> float | None:
        return None if x is None else round(x, digits)

    per_sample = [
        {"area_fraction": b["area_fraction"], "dice_one_pass": r(a["dice"]), "dice": r(b["dice"]), "agreement": r(b["agreement"]),
         "mask_probability": r(b["mask_probability"]), "hd95": r(b["hd95"], 2), "nsd": r(b["nsd"])}
        for a, b in zip(one["samples"], k["samples"])
    ]  # fmt: skip
    return {"one_pass": _brief(one), "k_passes": _brief(k), "seconds_one_pass": round(t1 - t0, 1),
            "seconds_k_passes": round(t2 - t1, 1), "per_sample": per_sample, "_records": k["samples"]}  # fmt: skip


def _row(name: str, one_pass_dice: float, k: dict[str, Any]) -> dict[str, Any]:
    det, bd = k["lesion_detection"], k["boundary"]
    agree, prob = k["uncertainty"]["agreement"], k["uncertainty"]["mask_probability"] or {}
    return {
        "set": name, "n": k["n"], "Dice 1 pass": one_pass_dice, "Dice K mean": k["dice"],
        "sens.": det["sensitivity"], "FP/img": det["fp_per_image"], "prec.": det["precision"],
        "HD95": bd["hd95"], "HD95 miss": bd["n_hd95_missing"], "NSD": bd["nsd"], "poor": agree["n_poor"],
        "agree.": agree["score_mean"], "Spearman": agree["spearman"], "AUROC agree.": agree["auroc"],
        "AUROC prob.": prob.get("auroc"),
    }  # fmt: skip


COLUMNS = ["set", "n", "Dice 1 pass", "Dice K mean", "sens.", "FP/img", "prec.", "HD95", "HD95 miss", "NSD", "poor",
           "agree.", "Spearman", "AUROC agree.", "AUROC prob."]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="synthetic,real", help="which parts to run: synthetic, real or both")
    p.add_argument("--synthetic-checkpoint", default=None, help="tiny checkpoint trained on the synthetic benchmark")
    p.add_argument("--synthetic-steps", type=int, default=300, help="training steps when no synthetic checkpoint is given")
    p.add_argument("--data", default="../shared/data/lidc_lung_nodule,../shared/data/lgg_brain_flair,../shared/data/kvasir_small_polyp")
    p.add_argument("--checkpoint", default=None, help="tiny checkpoint trained on --data (skips training)")
    p.add_argument("--max-steps", type=int, default=500, help="training steps on --data")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--samples", type=int, default=8, help="K, sampled passes per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="/tmp/uncertainty", help="folder for the training runs")
    p.add_argument("--json-dir", default="docs/results")
    args = p.parse_args()
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not parts or parts - {"synthetic", "real"}:
        p.error(f"--parts must name synthetic and/or real, got {args.parts!r}")
    if args.samples < 2:
        p.error(f"--samples must be >= 2 to measure agreement, got {args.samples}")
    torch.set_num_threads(args.threads)
    out, json_dir = Path(args.out), Path(args.json_dir)
    rows = []
    settings = {"samples": args.samples, "seed": args.seed, "threshold": 0.5, "poor_dice": 0.5, "nsd_tolerance_px": 2.0,
                "lesion_match": "any overlap, 8-connected components", "command": " ".join(sys.argv)}  # fmt: skip

    if "synthetic" in parts:
        t0 = time.perf_counter()
        ckpt, train_s = args.synthetic_checkpoint, None
        if ckpt is None:
            ckpt, train_s = _train("synthetic", out / "synthetic", steps=args.synthetic_steps, batch_size=args.batch_size,
                                   lr=args.lr, seed=args.seed)  # fmt: skip
        model = load_checkpoint(ckpt)
        test = open_dataset("synthetic", "test", seed=args.seed, synthetic_size=model.config.image_size)
        res = _evaluate(model, test, samples=args.samples, seed=args.seed, batch_size=16)
        res.pop("_records")
        rows.append(_row("synthetic test", res["one_pass"]["dice"], res["k_passes"]))
        write_json({"machine": machine(), "checkpoint": str(ckpt), "train_steps": args.synthetic_steps if train_s else None,
                    "train_seconds": None if train_s is None else round(train_s, 1), "data": "synthetic", "split": "test",
                    **settings, **res, "total_seconds": round(time.perf_counter() - t0, 1)},
                   json_dir / "uncertainty_synthetic.json")  # fmt: skip

    if "real" in parts:
        t0 = time.perf_counter()
        ckpt, train_s = args.checkpoint, None
        if ckpt is None:
            ckpt, train_s = _train(args.data, out / "shared_data", steps=args.max_steps, batch_size=args.batch_size,
                                   lr=args.lr, seed=args.seed)  # fmt: skip
        model = load_checkpoint(ckpt)
        per_set, records = {}, []
        for folder in [x for x in args.data.split(",") if x]:
            name = Path(folder).name
            res = _evaluate(model, open_dataset(folder, "test", seed=args.seed), samples=args.samples, seed=args.seed, batch_size=8)
            records += [SampleRecord.from_dict(d) for d in res.pop("_records")]
            per_set[name] = res
            rows.append(_row(f"{name} test", res["one_pass"]["dice"], res["k_passes"]))
        pooled = _brief(summarize(records))
        one_pooled = [s["dice_one_pass"] for r in per_set.values() for s in r["per_sample"]]
        rows.append(_row("pooled", sum(one_pooled) / len(one_pooled), pooled))
        write_json({"machine": machine(), "checkpoint": str(ckpt), "data": args.data, "split": "test", "preset": "tiny",
                    "train_steps": args.max_steps if train_s else None, "batch_size": args.batch_size, "lr": args.lr,
                    "train_seconds": None if train_s is None else round(train_s, 1), **settings,
                    "pooled": {"k_passes": pooled, "dice_one_pass": sum(one_pooled) / len(one_pooled)},
                    "datasets": per_set, "total_seconds": round(time.perf_counter() - t0, 1)},
                   json_dir / "uncertainty_shared_data.json")  # fmt: skip

    print(f"K = {args.samples} passes (seeds {args.seed}..{args.seed + args.samples - 1}); poor mask: Dice < 0.5; AUROC of "
          "1 - score for a poor mask (agreement; mean probability inside non-empty masks); HD95 / NSD (2 px) where defined")  # fmt: skip
    print(table(rows, COLUMNS))


if __name__ == "__main__":
    main()
