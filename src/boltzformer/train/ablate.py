"""``boltzformer ablate``: a grid of settings x seeds, each cell a training run plus an evaluation.

A grid file (YAML or JSON) holds a ``base`` cell, ``axes`` that each change one setting of it, and
``seeds``::

    seeds: [0, 1, 2]
    base:
      model: boltzformer          # or monai-unet (train/peer.py)
      preset: tiny
      settings: {image_size: 128} # ModelConfig overrides (dotted paths or unique field names)
      peer: {network: unet}       # PeerConfig, used when model is monai-unet
      train: {max_steps: 400}     # TrainConfig fields (the seed is the cell's)
      data: synthetic             # or dataset folder(s)
      data_seed: 0
      synthetic: {n_test: 96}     # SyntheticConfig counts
      eval: {batch_size: 16}
    axes:
      attention: {settings.attention: [boltzmann, full, masked, uniform]}
      peer: {model: [monai-unet]}

Each axis is one dotted path into ``base`` and its values. The settings are ``default`` (the base)
and one per axis value that differs from the base; cells are settings x seeds, in the file's order
(the default first, then the axes in order, every seed of a setting together).

Every cell writes ``cells/<setting>__seed<k>.json`` (atomically) under the output folder: the commit,
the full resolved configuration, the seed, the wall times and one record per test image (id, prompt,
size bucket, area, Dice). A rerun skips the finished cells and redoes a cell whose file is damaged,
incomplete or made with another configuration. Training runs live in ``runs/<cell>/``.

The grid (reading, expanding, resolving, the resume rules) is in :mod:`boltzformer.train.grid`; this
module runs the cells and writes their records.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import boltzformer
from boltzformer.config import ModelConfig, TrainConfig, config_from_dict
from boltzformer.data.loading import open_dataset
from boltzformer.evaluate import evaluate_model
from boltzformer.evaluate.ablation import write_summary
from boltzformer.io.atomic import write_json_atomic
from boltzformer.model.checkpoint import load_checkpoint
from boltzformer.train.grid import FORMAT, MODELS, Cell, cell_status, expand_grid, load_grid, resolve_cell
from boltzformer.train.peer import PeerConfig, load_peer
from boltzformer.train.runner import TrainJob, run_training

__all__ = ["FORMAT", "MODELS", "Cell", "load_grid", "expand_grid", "resolve_cell", "cell_status", "run_cell", "run_grid", "run_ablation"]

_print = functools.partial(print, flush=True)  # the progress lines reach a log file as they come


def _commit() -> dict[str, Any]:
    """The git commit of the package's source (None outside a checkout) and whether it had changes."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def run_cell(cell: Cell, config: dict[str, Any], out: Path, *, progress: bool = False,
             source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate one cell; write and return its record (``out/cells/<name>.json``).

    ``source``: the commit of the code that runs (:func:`_commit` when the grid started; by default now).
    """


    run_dir = out / "runs" / cell.name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start the cell again
    model_cfg = config_from_dict(ModelConfig, config["model_config"])
    tc = config_from_dict(TrainConfig, config["train_config"])
    peer = None
    if config["peer_config"] is not None:
        peer = PeerConfig(**config["peer_config"])
    t0 = time.perf_counter()
    last = run_training(TrainJob(model=model_cfg, train=tc, data=config["data"], out=run_dir, data_seed=config["data_seed"],
                                 synthetic_counts=config["synthetic_counts"], progress=progress, peer=peer))
    t1 = time.perf_counter()
    if peer is not None:
        model = load_peer(last)
    else:
        model = load_checkpoint(last)
    if tc.accelerator in ("gpu", "cuda") or (tc.accelerator == "auto" and torch.cuda.is_available()):
        model = model.to("cuda")  # evaluate where it trained
    test = open_dataset(config["data"], "test", seed=config["data_seed"], synthetic_size=model_cfg.image_size,
                        synthetic_counts=config["synthetic_counts"])
    ev = config["eval"]
    report = evaluate_model(model, test, batch_size=ev["batch_size"], seed=ev["seed"], limit=ev["limit"])
    t2 = time.perf_counter()
    record = {
        "format": FORMAT,
        "complete": True,
        "setting": cell.setting,
        "axis": cell.axis,
        "value": cell.value,
        "seed": cell.seed,
        **(source if source is not None else _commit()),
        "boltzformer_version": getattr(boltzformer, "__version__", None),
        "config": config,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "accelerator": tc.accelerator},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_seconds": {"train": round(t1 - t0, 1), "evaluate": round(t2 - t1, 1), "total": round(t2 - t0, 1)},
        "summary": {"dice": report["dice"], "dice_by_size": report["dice_by_size"], "n_by_size": report["n_by_size"]},
        "checkpoint": str(last),
        "images": [{"id": s["id"], "prompt": s["prompt"], "bucket": s["bucket"], "area_fraction": s["area_fraction"],
                    "dice": s["dice"], "pred_area_fraction": s["pred_area_fraction"]} for s in report["samples"]],
    }
    write_json_atomic(record, out / "cells" / f"{cell.name}.json")
    return record


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def run_grid(cells: Sequence[Cell], out: str | os.PathLike, *, accelerator: str | None = None, progress: bool = False,
             log: Callable[[str], None] = _print) -> dict[str, int]:
    """Run every cell that is not finished, in order, printing one line per cell with the time left.

    Returns the number of cells per outcome: ``finished`` (already there), ``ran``.
    """
    out = Path(out)
    configs = [resolve_cell(c, accelerator=accelerator) for c in cells]  # every cell checked before any work
    # the code that runs is the code imported with this module (everything a cell needs is imported at
    # its top): its commit is recorded in every cell, even if the checkout changes while the grid runs

    source = _commit()
    todo = []
    counts = {"finished": 0, "ran": 0}
    for cell, config in zip(cells, configs):
        status = cell_status(out / "cells" / f"{cell.name}.json", config)
        if status == "finished":
            counts["finished"] += 1
        else:
            todo.append((cell, config, status))
    out.mkdir(parents=True, exist_ok=True)
    log(f"boltzformer ablate: {len(cells)} cells, {counts['finished']} finished, {len(todo)} to run -> {out / 'cells'}")
    times: list[float] = []
    for i, (cell, config, status) in enumerate(todo, 1):
        why = {"missing": "", "damaged": " (its file was damaged: redone)", "changed": " (its file has another config: redone)"}[status]
        t0 = time.perf_counter()
        record = run_cell(cell, config, out, progress=progress, source=source)
        times.append(time.perf_counter() - t0)
        counts["ran"] += 1
        left = len(todo) - i
        by = record["summary"]["dice_by_size"]
        dice = " ".join(f"{b} {by[b]:.3f}" if by.get(b) is not None else f"{b} -" for b in ("tiny", "small", "large"))
        log(f"[{i}/{len(todo)}] {cell.name}{why}: Dice {record['summary']['dice']:.3f} ({dice}) in {_fmt_time(times[-1])}; "
            f"{left} left, about {_fmt_time(left * sum(times) / len(times))}")
    return counts


def run_ablation(grid_file: str | os.PathLike, out: str | os.PathLike, *, seeds: Sequence[int] | None = None,
                 model: str | None = None, accelerator: str | None = None, list_only: bool = False,
                 progress: bool = False, log: Callable[[str], None] = _print) -> dict[str, int] | None:
    """``boltzformer ablate GRID --out DIR``: check every cell, run those not finished, write the summary.

    With ``list_only`` it prints each cell's status and runs nothing.
    """

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; expected a folder")
    grid = load_grid(grid_file)
    cells = expand_grid(grid, seeds=seeds, model=model)
    configs = [resolve_cell(c, accelerator=accelerator) for c in cells]  # every cell checked before anything is written
    if list_only:
        for cell, config in zip(cells, configs):
            log(f"{cell.name}: {cell_status(out / 'cells' / f'{cell.name}.json', config)}")
        return None
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"grid_file": str(grid_file), "grid": grid, "seeds": sorted({c.seed for c in cells}), "model": model,
                       "settings": list(dict.fromkeys(c.setting for c in cells))}, out / "grid.json")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one line per cell, not Lightning's banner per run
    with warnings.catch_warnings():
        # the same two notices every cell (its run folder holds config.json before the first checkpoint;
        # a deprecation inside Lightning)
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        counts = run_grid(cells, out, accelerator=accelerator, progress=progress, log=log)
    result = write_summary(out)
    log(result["markdown"])
    log(f"summary: {out / 'summary.md'}, summary.json, summary.png")
    return counts
