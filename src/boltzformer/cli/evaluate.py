"""``boltzformer evaluate``: Dice and the rest of the report on a data split, skipped when up to date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from boltzformer.cli.args import WINDOW_OVERLAP_HELP, check_data_arg, check_overlap, read_json

__all__ = ["add_evaluate_parser", "cmd_evaluate"]


def add_evaluate_parser(sub) -> None:
    """``evaluate``: a checkpoint on a data split."""
    p = sub.add_parser("evaluate", help="Dice by target size on a data split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="'synthetic' or dataset folder(s), comma-separated")
    p.add_argument("--out", required=True, help="report .json (a .md table is written beside it)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="the split to score; 'all': every sample (a whole external dataset)")
    p.add_argument("--force", action="store_true", help="evaluate even when --out holds a report made by the same model and settings")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled attention")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    p.add_argument("--samples", type=int, default=1,
                   help="K > 1: K passes per image (sampling seeds seed..seed+K-1); the mean mask is scored and the "
                        "report says how well the agreement of the passes predicts a poor mask")
    p.add_argument("--lesion-iou", type=float, default=None,
                   help="a predicted lesion detects a true one when IoU > this (default: any overlap)")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm, or pixels without spacing")
    p.add_argument("--negatives", type=float, default=0.0, metavar="RATIO",
                   help="add RATIO x N negative prompts (targets absent from the image) to measure the existence head")
    p.add_argument("--window-overlap", type=float, default=None, metavar="OVERLAP",
                   help=WINDOW_OVERLAP_HELP)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from boltzformer.io.atomic import check_output
    from boltzformer.model.checkpoint import load_checkpoint
    from boltzformer.config import config_to_dict
    from boltzformer.data.loading import open_dataset
    from boltzformer.evaluate import evaluate_model, report_to_markdown, write_report
    from boltzformer.provenance import differences, made_by

    if not str(args.out).endswith(".json"):
        raise ValueError(f"--out must be a .json file, got {args.out}")
    check_output(args.out, kind="file")
    check_output(Path(args.out).with_suffix(".md"), kind="file")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1 (passes per image), got {args.samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_data_arg(args.data)
    check_overlap(args.window_overlap)
    model = load_checkpoint(args.checkpoint)
    settings = {k: getattr(args, k) for k in ("data", "split", "data_seed", "seed", "limit", "samples", "lesion_iou",
                                               "nsd_tolerance", "negatives", "batch_size", "window_overlap")}
    by = json.loads(json.dumps(made_by(args.checkpoint, config_to_dict(model.config), settings)))
    previous = read_json(Path(args.out))
    if previous is not None and not args.force:
        why = differences(previous.get("made_by"), by)
        if not why:
            print(f"{args.out}: up to date (made by the same checkpoint, settings and code); --force evaluates again")
            return 0
        print(f"{args.out}: evaluating again: {'; '.join(why)}", file=sys.stderr)
    dataset = open_dataset(args.data, args.split, seed=args.data_seed, synthetic_size=model.config.image_size)
    if args.negatives:
        from boltzformer.data.negatives import WithNegatives

        dataset = WithNegatives(dataset, args.negatives, seed=args.data_seed)
    report = evaluate_model(model, dataset, batch_size=args.batch_size, seed=args.seed, limit=args.limit, progress=True,
                            samples=args.samples, lesion_iou=args.lesion_iou, nsd_tolerance=args.nsd_tolerance,
                            window_overlap=args.window_overlap)
    report["checkpoint"] = str(args.checkpoint)
    report["data"] = args.data
    report["split"] = args.split
    report["made_by"] = by
    title = f"{args.data} ({args.split})"
    write_report(report, args.out, title=title)
    print(report_to_markdown(report, title=title))
    print(f"{args.out}: {report['n']} samples of {args.data} ({args.split}), Dice {report['dice']:.3f}")
    return 0
