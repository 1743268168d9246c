"""A figure of cross-validated models on slices of patients they were not trained on.

    OMP_NUM_THREADS=1 python benchmarks/heldout_figure.py --runs runs/crossval --dataset lidc --model lite \
        --out lidc_heldout.png     # outside the repository: the slices come from ../shared/data

For every fold of ``crossval.py``'s runs (``<runs>/<dataset>/<model>/fold<k>``), two test slices are shown,
chosen by a rule fixed before looking: the one with the fold's best Dice and the one with its median Dice
(among slices that hold a target). Each is predicted again with the fold's ``last.ckpt`` as ``crossval.py``
evaluated it (sliding window at the fold's overlap, seed 0), and that Dice must equal the one in the
fold's ``result.json``. A panel is [image | truth (green) | prediction (red)] zoomed around the target,
with the slice's Dice and its false-positive components anywhere in the slice in the caption.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crossval import DATASETS  # noqa: E402

from boltzformer.data.folder import FolderDataset  # noqa: E402
from boltzformer.evaluate.metrics import dice_per_sample  # noqa: E402
from boltzformer.model.checkpoint import load_checkpoint  # noqa: E402
from boltzformer.predict.engine import Predictor  # noqa: E402
from boltzformer.predict.visualize import panel  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _zoom(array: np.ndarray, centre: tuple[int, int], side: int, scale: int) -> np.ndarray:
    """A ``side`` x ``side`` crop around ``centre`` (kept inside the image), enlarged ``scale`` x (nearest)."""
    H, W = array.shape[:2]
    top = min(max(0, centre[0] - side // 2), max(0, H - side))
    left = min(max(0, centre[1] - side // 2), max(0, W - side))
    crop = array[top : top + side, left : left + side]
    return np.repeat(np.repeat(crop, scale, axis=0), scale, axis=1)


def _false_positives(pred: np.ndarray, truth: np.ndarray) -> int:
    labels, n = ndimage.label(pred, structure=np.ones((3, 3)))
    return sum(1 for i in range(1, n + 1) if not truth[labels == i].any())


def fold_panels(runs: Path, data: Path, dataset: str, model_name: str, fold: int, side: int) -> list[Image.Image]:
    folder, folds = DATASETS[dataset]
    run = runs / dataset / model_name / f"fold{fold}"
    result = json.loads((run / "result.json").read_text())
    test = FolderDataset(data / folder, split="test", seed=result["seed"], fold=(fold, folds))
    dice = result["per_image_dice"]
    with_target = [i for i in range(len(test)) if bool((test[i]["mask"] > 0).any())]
    ranked = sorted(with_target, key=lambda i: dice[i])
    chosen = {"best": ranked[-1], "median": ranked[len(ranked) // 2]}
    model = load_checkpoint(run / "run" / "last.ckpt").eval()
    predictor = Predictor(model, seed=result["seed"], window_overlap=result["window_overlap"])
    panels = []
    for label, i in chosen.items():
        s = test[i]
        image = s["image"][0].numpy().astype(np.uint8)
        truth = s["mask"][0].numpy() > 0.5
        pred = predictor.predict(s["image"].permute(1, 2, 0).numpy().astype(np.uint8), s["prompt"])
        d = float(dice_per_sample(torch.from_numpy(pred)[None, None], torch.from_numpy(truth)[None, None])[0])
        if abs(d - dice[i]) > 1e-3:
            raise SystemExit(f"fold {fold} {s['id']}: Dice {d:.4f} here, {dice[i]:.4f} in {run / 'result.json'}")
        ys, xs = np.nonzero(truth)
        centre = (int(ys.mean()), int(xs.mean()))
        scale = max(1, 256 // side)
        caption = (f"fold {fold}, held-out {s['id']} ({label} of {len(ranked)}): Dice {d:.2f}, "
                   f"{_false_positives(pred, truth)} false positive(s) in the slice")
        panels.append(panel(_zoom(image, centre, side, scale), _zoom(truth, centre, side, scale),
                            _zoom(pred, centre, side, scale), caption))
    return panels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="crossval.py's --runs folder")
    p.add_argument("--dataset", default="lidc", choices=list(DATASETS))
    p.add_argument("--model", default="lite")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--side", type=int, default=96, help="side of the zoomed crop around the target, in image pixels")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    folds = DATASETS[args.dataset][1]
    rows = []
    for k in range(folds):
        if (args.runs / args.dataset / args.model / f"fold{k}" / "result.json").exists():
            rows.append(fold_panels(args.runs, args.data, args.dataset, args.model, k, args.side))
    if not rows:
        p.error(f"no finished fold of {args.dataset}/{args.model} in {args.runs}")
    w, h = rows[0][0].size
    out = Image.new("RGB", (2 * w, len(rows) * h), (0, 0, 0))
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            out.paste(im, (c * w, r * h))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.png")
    out.save(tmp, optimize=True)
    tmp.replace(args.out)
    print(f"{args.out}: {len(rows)} folds x (best, median)")


if __name__ == "__main__":
    main()
