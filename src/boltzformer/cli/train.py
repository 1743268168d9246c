"""``boltzformer train``, ``demo`` and ``ablate``: the jobs that train models."""

from __future__ import annotations

import argparse
from pathlib import Path

from boltzformer.cli.args import DEMO_STEPS, check_data_arg, parse_overrides

__all__ = ["DEMO_STEPS", "add_ablate_parser", "add_demo_parser", "add_train_parser", "cmd_ablate", "cmd_demo", "cmd_train"]

# config.FREEZABLE_PARTS, written out so that building the parser does not import torch (tested equal)
_FREEZABLE = ["backbone", "pixel_decoder", "text_encoder"]
_LOSSES = ["dice_ce", "dice_focal", "tversky_ce"]  # config.LOSSES, likewise


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The model and training options shared by ``train`` (and read by :func:`_train_configs`)."""
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--max-steps", type=int, default=None, help="training steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the run (weights, sampling, data order)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data and of folder splits")
    p.add_argument("--image-size", type=int, default=None, help="model input side (multiple of 32)")
    p.add_argument("--attention", default=None, help="boltzmann | full | masked | uniform")
    p.add_argument("--devices", type=int, default=1, help="processes (DDP when > 1)")
    p.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    p.add_argument("--precision", default="32", choices=["32", "bf16"])
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps")
    p.add_argument("--val-batches", type=int, default=None, help="validation batches per check (default: all)")
    p.add_argument("--no-deep-supervision", action="store_true", help="loss on the final prediction only")
    p.add_argument("--existence", action="store_true",
                   help="add the existence head (is the prompted target in the image?) and train it")
    p.add_argument("--negatives", type=float, default=None, metavar="RATIO",
                   help="negative prompts (targets absent from the image, empty masks) per training sample "
                        "(default: 0.25 with --existence, else 0)")
    p.add_argument("--freeze", action="append", default=[], choices=_FREEZABLE,
                   help="leave this part untrained (repeat for several): less memory and time per step, "
                        "e.g. a pretrained backbone")
    p.add_argument("--patch-overlap", type=float, default=None, metavar="OVERLAP",
                   help="train on native-resolution patches of the input size (no resize), on the grid of a sliding "
                        "window with this overlap in [0, 1) (evaluate / predict with the same --window-overlap); "
                        "patches hold the target 80%% of the time (--target-fraction) and tiny-target images are drawn "
                        "4x as often")
    p.add_argument("--target-fraction", type=float, default=None, metavar="F",
                   help="with --patch-overlap: share of patches drawn around the target, the rest anywhere "
                        "(default 0.8; lower shows the model more background, the windows inference sees most)")
    p.add_argument("--feature-cache", default=None, metavar="DIR",
                   help="with --freeze backbone: compute the frozen encoder's features once per image into DIR "
                        "(keyed by encoder weights, image content and preprocessing) and flip features, not images")
    p.add_argument("--loss", default=None, choices=_LOSSES, help="segmentation loss (default: dice_ce, the paper's)")
    p.add_argument("--scale-jitter", default=None, choices=["auto", "none", "in", "both"],
                   help="whole images: zoom in around the target, or in and out (default: auto: synthetic none, folders in)")
    p.add_argument("--copy-paste", type=float, default=None, metavar="P",
                   help="whole images: probability of pasting a copy of the target elsewhere in the image (default 0)")
    p.add_argument("--image-weighting", action="store_true",
                   help="whole images: draw tiny-target images 4x and small 2x as often as large ones")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model setting, e.g. --set num_layers=9")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_train_parser(sub) -> None:
    """``train``: a model on the synthetic benchmark or dataset folders."""
    p = sub.add_parser("train", help="train a model")
    p.add_argument("--data", required=True, help="'synthetic' or dataset folder(s), comma-separated")
    p.add_argument("--out", required=True, help="run folder: last.ckpt, best.ckpt, config.json, logs/")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from last.ckpt (same preset, data and model settings as its config.json)")
    p.add_argument("--checkpoint-every-min", type=float, default=10.0, metavar="MIN",
                   help="also write last.ckpt every MIN minutes of training (default: 10; 0: only at validation)")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning; same preset and sizes)")
    add_train_args(p)


def add_demo_parser(sub) -> None:
    """``demo``: tiny on the synthetic benchmark, evaluated, with example predictions."""
    p = sub.add_parser("demo", help="train tiny on the synthetic benchmark, evaluate, show predictions")
    p.add_argument("--out", default="boltzformer-demo")
    p.add_argument("--max-steps", type=int, default=DEMO_STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", type=int, default=None, help="test images (default: the benchmark's 192)")
    p.add_argument("--quiet", action="store_true")


def add_ablate_parser(sub) -> None:
    """``ablate``: a grid of settings x seeds, or its summary."""
    p = sub.add_parser("ablate", help="a grid of settings x seeds, each cell trained and evaluated; or its summary")
    p.add_argument("grid", nargs="?", default=None, help="grid file (.yaml or .json): base, axes, seeds (configs/ablations/)")
    p.add_argument("--out", default=None, help="output folder: cells/*.json (one per cell), runs/, summary.md/.json/.png")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of every setting (default: the grid's)")
    p.add_argument("--model", default=None, choices=["boltzformer", "monai-unet"],
                   help="train this model in every cell (default: the grid's; monai-unet: the MONAI peer)")
    p.add_argument("--accelerator", default=None, help="auto | cpu | gpu (default: the grid's train.accelerator)")
    p.add_argument("--summary", default=None, metavar="DIR",
                   help="summarise the finished cells of DIR (an --out folder): summary.md, summary.json, summary.png")
    p.add_argument("--list", action="store_true", help="list the cells and whether each is finished; run nothing")
    p.add_argument("--progress", action="store_true", help="show each cell's training progress bar")


def _train_configs(args: argparse.Namespace):
    from boltzformer.config import TrainConfig, get_preset

    overrides = parse_overrides(args.set)
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.attention is not None:
        overrides["attention"] = args.attention
    model_cfg = get_preset(args.preset, **overrides)
    tc = TrainConfig(seed=args.seed, devices=args.devices, accelerator=args.accelerator, precision=args.precision,
                     num_workers=args.num_workers, freeze=tuple(dict.fromkeys(args.freeze)))
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
        tc.max_steps = args.max_steps
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        tc.batch_size = args.batch_size
    if args.lr is not None:
        tc.lr = args.lr
    if args.val_every is not None:
        tc.val_every = args.val_every
    tc.val_batches = args.val_batches
    tc.deep_supervision = not args.no_deep_supervision
    if args.loss is not None:
        tc.loss = args.loss
    if args.scale_jitter is not None:
        tc.scale_jitter = args.scale_jitter
    if args.copy_paste is not None:
        if not 0.0 <= args.copy_paste <= 1.0:
            raise ValueError(f"--copy-paste must be a probability in [0, 1], got {args.copy_paste}")
        tc.copy_paste = args.copy_paste
    tc.image_weighting = args.image_weighting
    if args.existence:
        model_cfg.decoder.existence = True
    negatives = args.negatives if args.negatives is not None else (0.25 if model_cfg.decoder.existence else 0.0)
    if not negatives >= 0:
        raise ValueError(f"--negatives must be >= 0, got {args.negatives}")
    tc.negative_ratio = negatives
    tc.warmup_steps = min(tc.warmup_steps, max(1, tc.max_steps // 10))
    if args.patch_overlap is not None:
        if not 0.0 <= args.patch_overlap < 1.0:
            raise ValueError(f"--patch-overlap must be in [0, 1), got {args.patch_overlap}")
        tc.patch_overlap = args.patch_overlap
    if args.target_fraction is not None:
        if args.patch_overlap is None:
            raise ValueError("--target-fraction applies to native-resolution patches: give --patch-overlap too")
        if not 0.0 <= args.target_fraction <= 1.0:
            raise ValueError(f"--target-fraction must be in [0, 1], got {args.target_fraction}")
        tc.target_fraction = args.target_fraction
    return model_cfg, tc


def cmd_train(args: argparse.Namespace) -> int:
    from boltzformer.train.runner import TrainJob, run_training

    from boltzformer.io.atomic import check_output

    check_data_arg(args.data)
    check_output(args.out, kind="folder")
    if args.checkpoint_every_min < 0:
        raise ValueError(f"--checkpoint-every-min must be >= 0 (0: only at validation), got {args.checkpoint_every_min}")
    model_cfg, tc = _train_configs(args)
    last = run_training(
        TrainJob(model=model_cfg, train=tc, data=args.data, out=Path(args.out), data_seed=args.data_seed,
                 resume=args.resume, init=Path(args.init) if args.init else None, progress=not args.quiet,
                 feature_cache=Path(args.feature_cache) if args.feature_cache else None,
                 checkpoint_every_min=args.checkpoint_every_min)
    )
    print(f"checkpoint: {last}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from boltzformer.io.atomic import check_output
    from boltzformer.cli.demo import run_demo

    check_output(args.out, kind="folder")
    run_demo(Path(args.out), max_steps=args.max_steps, seed=args.seed, n_test=args.n_test, progress=not args.quiet)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    if args.summary is not None:
        if args.grid is not None or args.out is not None:
            raise ValueError("--summary DIR summarises a finished run: give no grid file and no --out with it")
        from boltzformer.evaluate.ablation import write_summary

        result = write_summary(args.summary)
        print(result["markdown"])
        print(f"{Path(args.summary) / 'summary.md'}, summary.json, summary.png: {result['cells']} cells")
        return 0
    if args.grid is None or args.out is None:
        raise ValueError("ablate needs a grid file and --out DIR (or --summary DIR)")
    from boltzformer.train.ablate import run_ablation

    run_ablation(args.grid, args.out, seeds=args.seeds, model=args.model, accelerator=args.accelerator,
                 list_only=args.list, progress=args.progress)
    return 0
