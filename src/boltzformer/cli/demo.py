"""``boltzformer demo``: train ``tiny`` on the synthetic benchmark, evaluate it, show predictions.

Writes into the output folder: the run (``run/last.ckpt``, ``run/best.ckpt``, config, CSV logs),
``report.json`` and ``report.md`` (Dice overall and by target size on the test split),
``examples/*.png`` (image | truth | prediction), and prints the table.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from boltzformer.cli.args import DEMO_STEPS
from boltzformer.config import TrainConfig, get_preset
from boltzformer.data.synthetic import SyntheticConfig, SyntheticDataset
from boltzformer.evaluate import evaluate_model, report_to_markdown, write_report
from boltzformer.evaluate.metrics import dice_per_sample
from boltzformer.io.atomic import write_json_atomic
from boltzformer.model.checkpoint import load_checkpoint
from boltzformer.predict.engine import Predictor
from boltzformer.predict.outputs import save_pngs_atomic
from boltzformer.predict.visualize import panel
from boltzformer.train.runner import TrainJob, run_training

__all__ = ["run_demo"]


def _save_examples(model, dataset, out: Path, n: int, seed: int) -> list[Path]:
    predictor = Predictor(model, seed=seed)
    paths = {}
    # one example of every size bucket first, then the rest in order
    for i in range(min(n, len(dataset))):
        s = dataset[i]
        image = s["image"][0].numpy().astype(np.uint8)
        target = s["mask"][0].numpy() > 0.5
        pred = predictor.predict(image, s["prompt"])
        dice = float(dice_per_sample(torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None])[0])
        caption = f"'{s['prompt']}'  area {100 * s['area_fraction']:.2f}%  Dice {dice:.2f}"
        paths[out / f"{s['id']}.png"] = panel(image, target, pred, caption)
    save_pngs_atomic(paths)
    return list(paths)


def run_demo(out: Path, *, max_steps: int = DEMO_STEPS, seed: int = 0, n_test: int | None = None, progress: bool = True) -> dict:
    """Run the demo into ``out``; returns the test report."""
    out = Path(out)
    run_dir = out / "run"
    if run_dir.exists():
        # a demo always starts fresh: the previous demo run in this folder is replaced
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    model_cfg = get_preset("tiny")
    tc = TrainConfig(max_steps=max_steps, seed=seed, val_every=max(1, max_steps // 4))
    tc.warmup_steps = min(tc.warmup_steps, max(1, max_steps // 10))
    counts = {"n_test": n_test} if n_test else None
    print(f"boltzformer demo: training the tiny preset on the synthetic benchmark for {max_steps} steps -> {run_dir}")
    last = run_training(
        TrainJob(model=model_cfg, train=tc, data="synthetic", out=run_dir, data_seed=seed, synthetic_counts=counts, progress=progress)
    )
    train_s = time.perf_counter() - t0

    model = load_checkpoint(last)
    test = SyntheticDataset("test", SyntheticConfig(image_size=model_cfg.image_size, seed=seed, **(counts or {})))
    report = evaluate_model(model, test, batch_size=16, seed=seed, progress=progress)
    report["checkpoint"] = str(last)
    report["data"] = "synthetic"
    report["split"] = "test"
    report["train_steps"] = max_steps
    report["train_seconds"] = round(train_s, 1)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    title = f"boltzformer demo: tiny preset, synthetic test split, {max_steps} steps"
    write_report(report, out / "report.json", title=title)
    examples = _save_examples(model, test, out / "examples", n=6, seed=seed)
    write_json_atomic({"report": str(out / "report.json"), "examples": [str(p) for p in examples]}, out / "index.json")
    print()
    print(report_to_markdown(report, title=title))
    print(f"report: {out / 'report.json'} and {out / 'report.md'}; examples: {out / 'examples'}")
    print(f"wall time: {report['total_seconds']:.0f} s (training {train_s:.0f} s)")
    return report
