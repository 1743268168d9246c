"""The grid of ``boltzformer ablate`` (:mod:`boltzformer.train.ablate`): a grid file read and expanded into
cells (settings x seeds), each cell resolved to its full configuration, and whether a cell file on disk
is finished, damaged or made with another configuration (the resume rules).
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from boltzformer.config import ModelConfig, TrainConfig, config_from_dict, config_to_dict, get_preset
from boltzformer.data.synthetic import SyntheticConfig
from boltzformer.evaluate.ablation import CELL_FORMAT as FORMAT
from boltzformer.train.peer import PeerConfig

__all__ = ["FORMAT", "MODELS", "Cell", "cell_status", "expand_grid", "load_grid", "resolve_cell"]

MODELS = ("boltzformer", "monai-unet")
_BASE_KEYS = {"model", "preset", "settings", "peer", "train", "data", "data_seed", "synthetic", "eval"}
_DEFAULT_BASE: dict[str, Any] = {"model": "boltzformer", "preset": "tiny", "settings": {}, "peer": {}, "train": {},
                                 "data": "synthetic", "data_seed": 0, "synthetic": {}, "eval": {"batch_size": 16}}
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

    spec = cell.spec
    try:
        if spec["model"] not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {spec['model']!r}")
        model_cfg = get_preset(spec["preset"], **(spec["settings"] or {}))
        peer = None
        if spec["model"] == "monai-unet":
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

    stored = dict(data.get("config", {}))
    if isinstance(stored.get("model_config"), dict):  # a setting retired since the cell was made (config._RETIRED)
        try:
            stored["model_config"] = config_to_dict(config_from_dict(ModelConfig, stored["model_config"]))
        except (ValueError, TypeError):
            return "changed"
    defaults = {"model_config": config_to_dict(ModelConfig()), "train_config": config_to_dict(TrainConfig())}
    return "finished" if _comparable(stored) == _comparable(_without_new_defaults(config, stored, defaults)) else "changed"

