"""Command line: ``boltzformer train | evaluate | predict | explain | convert | demo | import | app | ablate``.

Every command checks its inputs first; a bad input is one line on stderr naming the file or
argument, exit code 2, and nothing half-written (outputs go to a temporary name, then are renamed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]

DEMO_STEPS = 1000
# config.FREEZABLE_PARTS, written out so that building the parser does not import torch (tested equal)
_FREEZABLE = ["backbone", "pixel_decoder", "text_encoder"]


class _VersionAction(argparse.Action):
    """``--version``: the package version and, from a git checkout, the commit (imported only when asked)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version (and git commit) and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from boltzformer.provenance import git_commit, package_version

        commit = git_commit()
        print(f"boltzformer {package_version()}" + (f" (commit {commit})" if commit else ""))
        parser.exit(0)


def _parse_value(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def _add_train_args(p: argparse.ArgumentParser) -> None:
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
                        "patches hold the target 80%% of the time and tiny-target images are drawn 4x as often")
    p.add_argument("--feature-cache", default=None, metavar="DIR",
                   help="with --freeze backbone: compute the frozen encoder's features once per image into DIR "
                        "(keyed by encoder weights, image content and preprocessing) and flip features, not images")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model setting, e.g. --set num_layers=9")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boltzformer", description="Text-promptable segmentation of small objects (BoltzFormer).")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model")
    p.add_argument("--data", required=True, help="'synthetic' or dataset folder(s), comma-separated")
    p.add_argument("--out", required=True, help="run folder: last.ckpt, best.ckpt, config.json, logs/")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from last.ckpt (same preset, data and model settings as its config.json)")
    p.add_argument("--checkpoint-every-min", type=float, default=10.0, metavar="MIN",
                   help="also write last.ckpt every MIN minutes of training (default: 10; 0: only at validation)")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning; same preset and sizes)")
    _add_train_args(p)

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
                   help="native resolution (models trained with --patch-overlap): slide the model's input window over the image " \
                        "with this overlap in [0, 1) and blend with Gaussian weights, instead of resizing the image")

    p = sub.add_parser("predict", help="segment what prompts name in images, volumes or folders of them")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", "--image", dest="input", required=True,
                   help="an image (PNG, JPEG, TIFF), a volume (NIfTI, DICOM file or series folder) or a folder of them")
    p.add_argument("--prompt", required=True, action="append", help="text prompt; repeat for several targets")
    p.add_argument("--out", required=True,
                   help="a folder (one mask per file and prompt, a record, summary.json; resumable), or for one 2D "
                        "image and one prompt a mask .png with its overlay beside it")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--existence-threshold", type=float, default=0.5,
                   help="with an existence head: empty mask when the target's probability of being there is lower")
    p.add_argument("--modality", default=None, help="CT, MR, ... (default: from the file or the prompt)")
    p.add_argument("--window", default=None,
                   help="CT window: a site (lung, abdomen, liver, pancreas, bone, brain, soft_tissue, ...) or CENTER,WIDTH "
                        "in HU (default: the site the prompt names)")
    p.add_argument("--axis", default=None, help="volumes: axial (default), coronal, sagittal, or 0/1/2 of the file")
    p.add_argument("--series-uid", default=None, help="DICOM folders holding several series: the SeriesInstanceUID to read")
    p.add_argument("--force", action="store_true",
                   help="folder --out: redo every (file, prompt) pair, even those made by the same model and settings")
    p.add_argument("--context", default=None, choices=["2d", "2.5d"],
                   help="volumes: each slice alone, or with its neighbours as the RGB channels (default: the "
                        "model's; 2.5d for biomedparse-v2)")
    p.add_argument("--overlap", default=None, choices=["independent", "nms"],
                   help="several prompts on a volume: independent masks, or one label per voxel (per-slice NMS "
                        "across prompts at IoU 0.5, then the most probable; default: the model's, nms for biomedparse-v2)")
    p.add_argument("--batch-size", type=int, default=8, help="volumes: slices per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (less memory)")
    p.add_argument("--window-overlap", type=float, default=None, metavar="OVERLAP",
                   help="native resolution (models trained with --patch-overlap): slide the model's input window over the image " \
                        "with this overlap in [0, 1) and blend with Gaussian weights, instead of resizing the image")
    p.add_argument("--quiet", action="store_true", help="no per-slice / per-file progress")
    p.add_argument("--samples", type=int, default=1,
                   help="K > 1: K passes with sampling seeds seed..seed+K-1; the mask is their mean; writes the "
                        "uncertainty map and the agreement score beside it")

    p = sub.add_parser("explain", help="per-layer sampling distributions and attended tokens over the image")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="folder for sampling_maps.png and sampling_maps.npz")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("convert", help="load pretrained weights (SAM2, LiteMedSAM, X-Decoder, official BoltzFormer, BiomedParse v2) into a preset")
    p.add_argument("--preset", required=True, help="tiny | lite | hiera-s | hiera-bp | focal-l | biomedparse-v2")
    p.add_argument("--weights", required=True, help=".pt / .pth / .ckpt / .safetensors file")
    p.add_argument("--out", required=True, help="boltzformer checkpoint to write (use it with train --init)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model setting")

    p = sub.add_parser("demo", help="train tiny on the synthetic benchmark, evaluate, show predictions")
    p.add_argument("--out", default="boltzformer-demo")
    p.add_argument("--max-steps", type=int, default=DEMO_STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", type=int, default=None, help="test images (default: the benchmark's 192)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("import", help="convert a BiomedParse or MSD / nnU-Net dataset to a dataset folder, or validate a folder")
    p.add_argument("source", help="dataset folder to read")
    p.add_argument("--out", default=None, help="dataset folder to write (omit to validate a boltzformer folder in place)")
    p.add_argument("--kind", default="auto", choices=["auto", "folder", "biomedparse", "msd"])
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--link", action="store_true", help="symlink the images instead of copying them (folder, biomedparse)")
    p.add_argument("--site", default=None, help="msd: anatomical site in the prompts (default: from dataset.json)")
    p.add_argument("--modality", default=None, help="msd: modality (default: from dataset.json)")
    p.add_argument("--channel", type=int, default=0, help="msd: channel of multi-channel cases")
    p.add_argument("--slice-step", type=int, default=1, help="msd: keep every k-th slice that holds a label")
    p.add_argument("--negative-ratio", type=float, default=0.25, help="msd: slices without the label per positive slice")
    p.add_argument("--rename", action="append", default=[], metavar="LABEL=NAME", help='msd: e.g. --rename "cancer=liver tumor"')
    p.add_argument("--seed", type=int, default=0, help="msd: seed of the negative slices")
    p.add_argument("--window", default=None, help="msd: CT window name (liver, lung, ...) or CENTER,WIDTH in HU (default: from the labels)")

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

    p = sub.add_parser("app", help="a browser page to segment uploaded images and volumes (gradio, offline)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--port", type=int, default=None, help="default: the first free port from 7860")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    return parser


def _check_overlap(overlap: float | None) -> None:
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise ValueError(f"--window-overlap must be in [0, 1), got {overlap}")


def _train_configs(args: argparse.Namespace):
    from boltzformer.config import TrainConfig, get_preset

    overrides = _overrides(args.set)
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
    return model_cfg, tc


def _check_data_arg(data: str) -> None:
    from boltzformer.data.loading import SYNTHETIC

    for p in data.split(","):
        if p and p != SYNTHETIC and not Path(p).is_dir():
            raise FileNotFoundError(f"--data {p}: no such dataset folder (expected 'synthetic' or a folder with meta.json)")


def cmd_train(args: argparse.Namespace) -> int:
    from boltzformer.train.runner import TrainJob, run_training

    from boltzformer.io.atomic import check_output

    _check_data_arg(args.data)
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
    _check_data_arg(args.data)
    _check_overlap(args.window_overlap)
    model = load_checkpoint(args.checkpoint)
    settings = {k: getattr(args, k) for k in ("data", "split", "data_seed", "seed", "limit", "samples", "lesion_iou",
                                               "nsd_tolerance", "negatives", "batch_size", "window_overlap")}
    by = json.loads(json.dumps(made_by(args.checkpoint, config_to_dict(model.config), settings)))
    previous = _read_json(Path(args.out))
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


def _read_json(path: Path) -> dict | None:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _save_png_atomic(images: dict[Path, Any]) -> None:
    """Write PIL images to their paths: all to temporary names first, then rename them all."""
    from boltzformer.io.atomic import atomic_paths

    with atomic_paths(*images) as temps:
        for tmp, img in zip(temps, images.values()):
            img.save(tmp, format="PNG")


def _window_arg(window: str | None):
    """--window as given, checked (a known name, or CENTER,WIDTH with width > 0) before any file is read."""
    from boltzformer.io.windows import _resolve_window

    if window is None:
        return None
    if "," not in window:
        try:
            _resolve_window(window)
        except ValueError as exc:
            raise ValueError(f"--window: {exc}") from None
        return window
    try:
        center, width = (float(v) for v in window.split(","))
    except ValueError:
        raise ValueError(f"--window expects a site name or CENTER,WIDTH in HU, got {window!r}") from None
    try:
        return _resolve_window((center, width))
    except ValueError as exc:
        raise ValueError(f"--window {window}: {exc}") from None


def _axis_arg(axis: str | None):
    from boltzformer.io.medical import VIEWS

    if axis is None:
        return None
    if axis in ("0", "1", "2"):
        return int(axis)
    if axis not in VIEWS:
        raise ValueError(f"--axis must be one of {sorted(VIEWS)} or 0, 1, 2, got {axis!r}")
    return axis


def _modality_arg(modality: str | None) -> str | None:
    import re

    if modality is None:
        return None
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9 +_-]{0,31}", modality.strip()):
        raise ValueError(f"--modality expects a modality name such as CT, MR, PET, US (letters, digits, '-'), got {modality!r}")
    return modality.strip()


def _probability_arg(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def cmd_predict(args: argparse.Namespace) -> int:
    from boltzformer.io.atomic import check_output
    from boltzformer.model.text import check_prompts

    prompts = check_prompts(args.prompt, name="--prompt")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    _check_overlap(args.window_overlap)
    _probability_arg("--threshold", args.threshold)
    _probability_arg("--existence-threshold", args.existence_threshold)
    window = _window_arg(args.window)
    args.axis = _axis_arg(args.axis)
    args.modality = _modality_arg(args.modality)
    out = Path(args.out)
    if not Path(args.input).exists():
        raise FileNotFoundError(f"--input {args.input} does not exist")
    if out.suffix.lower() == ".png":
        if Path(args.input).is_dir():
            raise ValueError(f"--input {args.input} is a folder (images or a DICOM series): give a folder as --out, "
                             f"not the mask file {out}")
        check_output(out, kind="file")
        return _predict_one_image(args, prompts, window)
    if args.samples > 1:
        raise ValueError("--samples applies to one 2D image with --out MASK.png")
    check_output(out, kind="folder")
    from boltzformer.model.checkpoint import load_checkpoint
    from boltzformer.predict.files import find_inputs, run_batch, summary_table

    inputs = find_inputs(args.input)
    model = load_checkpoint(args.checkpoint)
    progress = None
    if len(inputs) == 1 and not args.quiet:
        progress = lambda done, total: print(f"\r  slice {done}/{total}", end="" if done < total else "\n", file=sys.stderr)  # noqa: E731
    log = (lambda line: print(line, file=sys.stderr)) if not args.quiet else (  # noqa: E731
        lambda line: print(line, file=sys.stderr) if "error" in line or "redone" in line else None)
    rows = run_batch(
        model, inputs, prompts, out, checkpoint=args.checkpoint, force=args.force, log=log,
        modality=args.modality, window=window, axis=args.axis, context=args.context,
        batch_size=args.batch_size, seed=args.seed, threshold=args.threshold,
        existence_threshold=args.existence_threshold, series_uid=args.series_uid, overlap=args.overlap, progress=progress,
        window_overlap=args.window_overlap,
    )
    print(summary_table(rows))
    errors = sum(r.status == "error" for r in rows)
    done = sum(r.status == "done" for r in rows)
    print(f"{out / 'summary.json'}: {len(rows)} (file, prompt) pairs, {done} done, {len(rows) - done - errors} skipped, {errors} failed")
    return 1 if errors else 0


def _predict_one_image(args: argparse.Namespace, prompts: list[str], window) -> int:
    import numpy as np
    from PIL import Image

    from boltzformer.io.atomic import write_json_atomic
    from boltzformer.model.checkpoint import load_checkpoint
    from boltzformer.config import config_to_dict
    from boltzformer.io.medical import check_segmentable, load_image
    from boltzformer.io.windows import intensity_plan, to_uint8
    from boltzformer.predict.lesions import lesions
    from boltzformer.provenance import made_by
    from boltzformer.predict.engine import Predictor
    from boltzformer.predict.visualize import overlay

    out = Path(args.out)
    if len(prompts) != 1:
        raise ValueError(f"--out {out} is one mask file: give one --prompt, or a folder as --out for {len(prompts)} prompts")
    prompt = prompts[0]
    source = load_image(args.input, modality=args.modality, axis=args.axis, series_uid=args.series_uid)
    if source.is_volume:
        raise ValueError(f"--input {args.input} is a volume: give a folder as --out (the mask is written as NIfTI)")
    check_segmentable(source)
    plan = intensity_plan(source, window=window, prompt=prompt)
    image = to_uint8(source, window=window, prompt=prompt)
    predictor = Predictor(load_checkpoint(args.checkpoint), threshold=args.threshold, seed=args.seed, bf16=args.bf16,
                          existence_threshold=args.existence_threshold, window_overlap=args.window_overlap)
    t0 = time.perf_counter()
    extra: dict[Path, Any] = {}
    if args.samples > 1:
        result = predictor.predict_samples(image, prompt, args.samples)
        prob, mask, existence = result["mean"], result["mask"], result["existence"]
        std = result["std"]
        extra[out.with_name(out.stem + "_uncertainty.png")] = Image.fromarray((np.clip(std / 0.5, 0, 1) * 255).astype(np.uint8))
    else:
        [res] = predictor.segment(image, [prompt])
        prob, mask, existence = res.probability, res.mask, res.existence
    elapsed = time.perf_counter() - t0
    overlay_path = out.with_name(out.stem + "_overlay.png")
    _save_png_atomic(
        {out: Image.fromarray((mask * 255).astype(np.uint8)), overlay_path: overlay(image, mask, label=prompt), **extra}
    )
    if args.samples > 1:
        write_json_atomic({"samples": args.samples, "seed": args.seed, "agreement": result["agreement"],
                           "mean_std_in_mask": float(std[mask].mean()) if mask.any() else None},
                          out.with_name(out.stem + "_uncertainty.json"))
        print(f"agreement of the {args.samples} passes (mean pairwise Dice): {result['agreement']:.3f}")
    spacing = tuple(source.spacing[:2]) if source.spacing else None
    found = lesions(mask, probability=prob, spacing=spacing)
    write_json_atomic([x.to_dict() for x in found], out.with_name(out.stem + "_lesions.json"))
    record = out.with_suffix(".json")
    settings = {"seed": args.seed, "threshold": args.threshold, "existence_threshold": args.existence_threshold,
                "window": window, "modality": args.modality, "samples": args.samples, "bf16": args.bf16}
    write_json_atomic({"file": str(args.input), "prompt": prompt, "output": out.name, "present": bool(mask.any()),
                       "area_px": int(mask.sum()), "existence": existence, "intensity": plan,
                       "made_by": made_by(args.checkpoint, config_to_dict(predictor.model.config), settings)}, record)
    for x in found[:5]:
        print(f"  lesion {x.label}: {x.area_px} px at (row {x.centroid[0]:.0f}, col {x.centroid[1]:.0f}), mean probability {x.mean_probability:.2f}")
    if len(found) > 5:
        print(f"  ... {len(found) - 5} more in {out.stem}_lesions.json")
    if existence is not None:
        print(f"existence: {existence:.3f} (target {'present' if existence >= args.existence_threshold else 'absent'})")
    area = float(mask.mean())
    print(f"overlay: {overlay_path}; record (what made it): {record}")
    print(f"intensities: {plan['mapping']} ({plan['why']})")
    print(f"{out}: {len(found)} lesion(s), {int(mask.sum())} pixels ({100 * area:.3f}% of the image), max probability {float(prob.max()):.3f}, {elapsed:.2f} s")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from boltzformer.io.atomic import atomic_paths, check_output
    from boltzformer.model.checkpoint import load_checkpoint
    from boltzformer.io.images import read_image
    from boltzformer.predict.explain import sampling_maps, save_sampling_grid
    from boltzformer.model.text import check_prompts

    check_prompts([args.prompt], name="--prompt")
    check_output(args.out, kind="folder")
    image = read_image(args.image)
    maps = sampling_maps(load_checkpoint(args.checkpoint), image, args.prompt, seed=args.seed)
    out = Path(args.out)
    png, npz = out / "sampling_maps.png", out / "sampling_maps.npz"
    with atomic_paths(png, npz) as (tmp_png, tmp_npz):
        save_sampling_grid(maps, image, tmp_png)
        with open(tmp_npz, "wb") as f:
            np.savez_compressed(f, **maps.to_npz_dict())
    print(f"{png}: {len(maps.distributions)} layers, temperatures {', '.join(f'{t:.3f}' for t in maps.temperatures)}")
    print(f"{npz}: the raw arrays")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from boltzformer.io.atomic import check_output, write_json_atomic
    from boltzformer.model.checkpoint import save_checkpoint
    from boltzformer.model import build_model
    from boltzformer.model.weights import load_pretrained

    out = Path(args.out)
    check_output(out, kind="file")
    check_output(out.with_name(out.name + ".load.json"), kind="file")
    if not Path(args.weights).exists():
        raise FileNotFoundError(f"--weights {args.weights} does not exist")
    if not Path(args.weights).is_file():
        raise ValueError(f"--weights {args.weights} is a folder; expected a .pt / .pth / .ckpt / .safetensors file")
    model = build_model(args.preset, **_overrides(args.set))
    report = load_pretrained(model, args.weights)
    save_checkpoint(model, out)
    write_json_atomic(asdict(report), out.with_name(out.name + ".load.json"))
    print(report.summary())
    for name, items in (("unused", report.unused), ("missing", report.missing)):
        reasons: dict[str, int] = {}
        for why in items.values():
            reasons[why] = reasons.get(why, 0) + 1
        for why, n in sorted(reasons.items(), key=lambda x: -x[1]):
            print(f"  {name}: {n} ({why})")
    print(f"checkpoint: {out} (key lists in {out.name}.load.json)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from boltzformer.io.atomic import check_output
    from boltzformer.cli.demo import run_demo

    check_output(args.out, kind="folder")
    run_demo(Path(args.out), max_steps=args.max_steps, seed=args.seed, n_test=args.n_test, progress=not args.quiet)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from boltzformer.data.importers import import_dataset

    renames = dict(pair.split("=", 1) for pair in args.rename if "=" in pair)
    if len(renames) != len(args.rename):
        raise ValueError(f"--rename expects LABEL=NAME, got {args.rename}")
    summary = import_dataset(args.source, args.out, kind=args.kind, overwrite=args.overwrite, link=args.link,
                             site=args.site, modality=args.modality, channel=args.channel, slice_step=args.slice_step,
                             negative_ratio=args.negative_ratio, label_names=renames, seed=args.seed,
                             window=tuple(args.window.split(",")) if args.window and "," in args.window else args.window)
    print(summary.format())
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


def cmd_app(args: argparse.Namespace) -> int:
    import boltzformer.app

    boltzformer.app.serve(args.checkpoint, host=args.host, port=args.port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "convert": cmd_convert, "explain": cmd_explain, "demo": cmd_demo,
                "import": cmd_import, "app": cmd_app, "ablate": cmd_ablate}
    if args.command != "import":
        from boltzformer.runtime import keep_freed_memory

        keep_freed_memory()  # large tensors reuse freed memory instead of fresh zeroed pages (runtime.py)
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError, ImportError) as exc:
        print(f"boltzformer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
