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
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from boltzformer.io.atomic import write_json_atomic

__all__ = ["MODELS", "Cell", "load_grid", "expand_grid", "resolve_cell", "cell_status", "run_cell", "run_grid", "run_ablation"]

MODELS = ("boltzformer", "monai-unet")
FORMAT = 1
_BASE_KEYS = {"model", "preset", "settings", "peer", "train", "data", "data_seed", "synthetic", "eval"}
_DEFAULT_BASE: dict[str, Any] = {"model": "boltzformer", "preset": "tiny", "settings": {}, "peer": {}, "train": {},
                                 "data": "synthetic", "data_seed": 0, "synthetic": {}, "eval": {"batch_size": 16}}
_print = functools.partial(print, flush=True)  # the progress lines reach a log file as they come
# settings that change where a cell runs, not what it computes: a cell made with others still counts
_WHERE = ("accelerator", "num_workers")


@dataclass(frozen=True)
class Cell:
    setting: str  # "default" or "<axis>=<value>"
    axis: str | None  # None for the default
    value: Any
    seed: int
    spec: dict[str, Any]  # the base with this setting applied (before resolving)

    @property
    def name(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.=+-]', '_', self.setting)}__seed{self.seed}"


def load_grid(path: str | os.PathLike) -> dict[str, Any]:
    """Read a grid file (``.yaml``/``.yml`` or ``.json``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            grid = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"grid file {path} is not valid YAML: {exc}") from None
    elif path.suffix.lower() == ".json":
        try:
            grid = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"grid file {path} is not valid JSON: {exc}") from None
    else:
        raise ValueError(f"grid file {path}: expected a .yaml, .yml or .json file")
    if not isinstance(grid, dict):
        raise ValueError(f"grid file {path}: expected a mapping with 'base', 'axes' and 'seeds'")
    return grid


def _set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    target = spec
    for p in parents:
        if not isinstance(target.get(p, {}), dict):
            raise ValueError(f"axis path {path!r}: {p!r} is not a mapping in the base")
        target = target.setdefault(p, {})
    target[leaf] = value


def _get_path(spec: dict[str, Any], path: str) -> Any:
    target: Any = spec
    for p in path.split("."):
        if not isinstance(target, dict) or p not in target:
            return None
        target = target[p]
    return target


def expand_grid(grid: dict[str, Any], *, seeds: Sequence[int] | None = None, model: str | None = None) -> list[Cell]:
    """The cells of ``grid``: settings (default, then one per axis value) x seeds.

    ``seeds`` replaces the grid's seeds; ``model`` sets ``base.model`` (every cell trains that model).
    A value equal to the base's is the default setting, not a cell of its own.
    """
    unknown = set(grid) - {"base", "axes", "seeds", "name", "description"}
    if unknown:
        raise ValueError(f"grid: unknown top-level key(s) {sorted(unknown)}; expected base, axes, seeds")
    base = copy.deepcopy(_DEFAULT_BASE)
    given = grid.get("base") or {}
    if not isinstance(given, dict):
        raise ValueError("grid: 'base' must be a mapping")
    bad = set(given) - _BASE_KEYS
    if bad:
        raise ValueError(f"grid: unknown base key(s) {sorted(bad)}; expected some of {sorted(_BASE_KEYS)}")
    base.update(copy.deepcopy(given))
    if model is not None:
        base["model"] = model
    seeds = list(grid.get("seeds", [0]) if seeds is None else seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
    settings: list[tuple[str, str | None, Any, dict[str, Any]]] = [("default", None, None, base)]
    axes = grid.get("axes") or {}
    if not isinstance(axes, dict):
        raise ValueError("grid: 'axes' must be a mapping of axis name -> {dotted.path: [values]}")
    for axis, body in axes.items():
        if not isinstance(body, dict) or len(body) != 1:
            raise ValueError(f"grid axis {axis!r}: expected one dotted path and its values, e.g. {{settings.attention: [full]}}")
        [(path, values)] = body.items()
        if path.split(".")[0] not in _BASE_KEYS:
            raise ValueError(f"grid axis {axis!r}: path {path!r} must start with one of {sorted(_BASE_KEYS)}")
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid axis {axis!r}: values must be a non-empty list, got {values!r}")
        for value in values:
            if _get_path(base, path) == value:
                continue  # the default setting
            spec = copy.deepcopy(base)
            _set_path(spec, path, value)
            settings.append((f"{axis}={value}", axis, value, spec))
    names = [s[0] for s in settings]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"grid: settings {sorted(dup)} appear twice; give each axis value once")
    return [Cell(setting=n, axis=a, value=v, seed=s, spec=spec) for n, a, v, spec in settings for s in seeds]


def resolve_cell(cell: Cell, *, accelerator: str | None = None) -> dict[str, Any]:
    """The full configuration of a cell (every model, train, data and evaluation setting).

    Raises:
        ValueError: a setting that the configs refuse, named with the cell.
    """
    from boltzformer.config import TrainConfig, config_to_dict, get_preset
    from boltzformer.data.synthetic import SyntheticConfig

    spec = cell.spec
    try:
        if spec["model"] not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {spec['model']!r}")
        model_cfg = get_preset(spec["preset"], **(spec["settings"] or {}))
        peer = None
        if spec["model"] == "monai-unet":
            from boltzformer.train.peer import PeerConfig

            peer = asdict(PeerConfig(**(spec["peer"] or {})))
        train = dict(spec["train"] or {})
        if "seed" in train:
            raise ValueError("train.seed is the cell's seed: list seeds under 'seeds' instead")
        if accelerator is not None:
            train["accelerator"] = accelerator
        tc = TrainConfig(**train, seed=cell.seed)
        tc.warmup_steps = min(tc.warmup_steps, max(1, tc.max_steps // 10))
        counts = dict(spec["synthetic"] or {})
        if spec["data"] == "synthetic":
            SyntheticConfig(image_size=model_cfg.image_size, seed=spec["data_seed"], **counts)  # checks the counts
        ev = dict(spec["eval"] or {})
        bad = set(ev) - {"batch_size", "limit"}
        if bad:
            raise ValueError(f"eval: unknown key(s) {sorted(bad)}; expected batch_size, limit")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"grid cell {cell.setting}: {exc}") from None
    return {
        "model": spec["model"],
        "model_config": config_to_dict(model_cfg),
        "peer_config": peer,
        "train_config": config_to_dict(tc),
        "data": spec["data"],
        "data_seed": spec["data_seed"],
        "synthetic_counts": counts or None,
        "eval": {"batch_size": ev.get("batch_size", 16), "limit": ev.get("limit"), "seed": cell.seed},
    }


def _comparable(config: dict[str, Any]) -> str:
    c = copy.deepcopy(config)
    for key in _WHERE:
        c.get("train_config", {}).pop(key, None)
    return json.dumps(c, sort_keys=True, default=str)


def _without_new_defaults(current: Any, stored: Any, default: Any) -> Any:
    """``current`` less the settings that ``stored`` lacks and that hold their default: a setting added
    to the package after a cell was made, left at its default, does not make the cell another one."""
    if not (isinstance(current, dict) and isinstance(stored, dict)):
        return current
    default = default if isinstance(default, dict) else {}
    return {k: _without_new_defaults(v, stored.get(k), default.get(k)) for k, v in current.items()
            if k in stored or not (k in default and default[k] == v)}


def cell_status(path: Path, config: dict[str, Any]) -> str:
    """``"finished"``, ``"missing"``, ``"damaged"`` (unreadable or incomplete) or ``"changed"`` (made
    with another configuration) for the cell file ``path`` of a cell whose configuration is ``config``."""
    if not path.exists():
        return "missing"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ok = data.get("format") == FORMAT and data.get("complete") is True and isinstance(data.get("images"), list) and data["images"]
        ok = ok and all(isinstance(r.get("dice"), (int, float)) and r.get("bucket") and r.get("id") for r in data["images"])
    except (ValueError, AttributeError, TypeError, UnicodeDecodeError):
        return "damaged"
    if not ok:
        return "damaged"
    from boltzformer.config import ModelConfig, TrainConfig, config_to_dict

    stored = data.get("config", {})
    defaults = {"model_config": config_to_dict(ModelConfig()), "train_config": config_to_dict(TrainConfig())}
    return "finished" if _comparable(stored) == _comparable(_without_new_defaults(config, stored, defaults)) else "changed"


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
    import torch

    from boltzformer.config import ModelConfig, TrainConfig, config_from_dict
    from boltzformer.data.loading import open_dataset
    from boltzformer.evaluate import evaluate_model
    from boltzformer.train.runner import TrainJob, run_training

    import boltzformer

    run_dir = out / "runs" / cell.name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start the cell again
    model_cfg = config_from_dict(ModelConfig, config["model_config"])
    tc = config_from_dict(TrainConfig, config["train_config"])
    peer = None
    if config["peer_config"] is not None:
        from boltzformer.train.peer import PeerConfig

        peer = PeerConfig(**config["peer_config"])
    t0 = time.perf_counter()
    last = run_training(TrainJob(model=model_cfg, train=tc, data=config["data"], out=run_dir, data_seed=config["data_seed"],
                                 synthetic_counts=config["synthetic_counts"], progress=progress, peer=peer))
    t1 = time.perf_counter()
    if peer is not None:
        from boltzformer.train.peer import load_peer

        model = load_peer(last)
    else:
        from boltzformer.model.checkpoint import load_checkpoint

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
    # the code that runs is the code imported now: its commit is recorded in every cell, even if the
    # checkout changes while the grid runs (everything a cell needs is imported here, not later)
    import boltzformer.model.checkpoint  # noqa: F401
    import boltzformer.evaluate  # noqa: F401
    import boltzformer.train.peer  # noqa: F401
    import boltzformer.train.runner  # noqa: F401

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
    import logging
    import warnings

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
    from boltzformer.evaluate.ablation import write_summary

    result = write_summary(out)
    log(result["markdown"])
    log(f"summary: {out / 'summary.md'}, summary.json, summary.png")
    return counts
