"""``boltzformer predict`` (one image, or files and folders) and ``explain`` (the sampling maps), both
through the one inference engine (:class:`~boltzformer.predict.engine.Predictor`) and the one writer
(:func:`~boltzformer.predict.outputs.write_prediction`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from boltzformer.cli.args import WINDOW_OVERLAP_HELP, axis_arg, check_overlap, modality_arg, probability_arg, window_arg

__all__ = ["add_explain_parser", "add_predict_parser", "cmd_explain", "cmd_predict"]


def add_predict_parser(sub) -> None:
    """``predict``: masks for prompts in an image, a volume or a folder of them."""
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
                   help=WINDOW_OVERLAP_HELP)
    p.add_argument("--quiet", action="store_true", help="no per-slice / per-file progress")
    p.add_argument("--samples", type=int, default=1,
                   help="K > 1: K passes with sampling seeds seed..seed+K-1; the mask is their mean; writes the "
                        "uncertainty map and the agreement score beside it")


def add_explain_parser(sub) -> None:
    """``explain``: per-layer sampling distributions and attended tokens."""
    p = sub.add_parser("explain", help="per-layer sampling distributions and attended tokens over the image")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="folder for sampling_maps.png and sampling_maps.npz")
    p.add_argument("--seed", type=int, default=0)


def cmd_predict(args: argparse.Namespace) -> int:
    from boltzformer.io.atomic import check_output
    from boltzformer.model.text import check_prompts

    prompts = check_prompts(args.prompt, name="--prompt")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_overlap(args.window_overlap)
    probability_arg("--threshold", args.threshold)
    probability_arg("--existence-threshold", args.existence_threshold)
    window = window_arg(args.window)
    args.axis = axis_arg(args.axis)
    args.modality = modality_arg(args.modality)
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
    from boltzformer.config import config_to_dict
    from boltzformer.io.atomic import write_json_atomic
    from boltzformer.io.medical import check_segmentable, load_image
    from boltzformer.io.windows import intensity_plan, to_uint8
    from boltzformer.model.checkpoint import load_checkpoint
    from boltzformer.predict.engine import Predictor
    from boltzformer.predict.outputs import write_prediction
    from boltzformer.provenance import made_by

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
    [result] = predictor.segment(image, [prompt], samples=args.samples)
    elapsed = time.perf_counter() - t0
    mask, prob, existence = result.mask, result.probability, result.existence
    written = write_prediction(result, source, image, out, with_uncertainty=args.samples > 1)  # mask, overlay, lesions
    if args.samples > 1:
        assert result.std is not None and result.agreement is not None
        write_json_atomic({"samples": args.samples, "seed": args.seed, "agreement": result.agreement,
                           "mean_std_in_mask": float(result.std[mask].mean()) if mask.any() else None},
                          out.with_name(out.stem + "_uncertainty.json"))
        print(f"agreement of the {args.samples} passes (mean pairwise Dice): {result.agreement:.3f}")
    found = written.lesions
    record = out.with_suffix(".json")
    settings = {"seed": args.seed, "threshold": args.threshold, "existence_threshold": args.existence_threshold,
                "window": window, "modality": args.modality, "samples": args.samples, "bf16": args.bf16}
    write_json_atomic(dict(written.record, file=str(args.input), intensity=plan,
                           made_by=made_by(args.checkpoint, config_to_dict(predictor.model.config), settings)), record)
    for x in found[:5]:
        print(f"  lesion {x.label}: {x.area_px} px at (row {x.centroid[0]:.0f}, col {x.centroid[1]:.0f}), "
              f"mean probability {x.mean_probability:.2f}, highest {x.max_probability:.2f}")
    if len(found) > 5:
        print(f"  ... {len(found) - 5} more in {out.stem}_lesions.json")
    if existence is not None:
        print(f"existence: {existence:.3f} (target {'present' if existence >= args.existence_threshold else 'absent'})")
    area = float(mask.mean())
    print(f"overlay: {out.with_name(out.stem + '_overlay.png')}; record (what made it): {record}")
    print(f"intensities: {plan['mapping']} ({plan['why']})")
    print(f"{out}: {len(found)} lesion(s), {int(mask.sum())} pixels ({100 * area:.3f}% of the image), max probability {float(prob.max()):.3f}, {elapsed:.2f} s")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from boltzformer.io.atomic import atomic_paths, check_output
    from boltzformer.io.images import read_image
    from boltzformer.model.checkpoint import load_checkpoint
    from boltzformer.model.text import check_prompts
    from boltzformer.predict.engine import Predictor
    from boltzformer.predict.explain import sampling_maps, save_sampling_grid

    check_prompts([args.prompt], name="--prompt")
    check_output(args.out, kind="folder")
    image = read_image(args.image)
    maps = sampling_maps(Predictor(load_checkpoint(args.checkpoint), seed=args.seed), image, args.prompt)
    out = Path(args.out)
    png, npz = out / "sampling_maps.png", out / "sampling_maps.npz"
    with atomic_paths(png, npz) as (tmp_png, tmp_npz):
        save_sampling_grid(maps, image, tmp_png)
        with open(tmp_npz, "wb") as f:
            np.savez_compressed(f, **maps.to_npz_dict())
    print(f"{png}: {len(maps.distributions)} layers, temperatures {', '.join(f'{t:.3f}' for t in maps.temperatures)}")
    print(f"{npz}: the raw arrays")
    return 0
