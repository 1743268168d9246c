"""Argument helpers shared by the sub-commands: checks that run before any file is read, each raising
a ValueError that names the option, and the ``--set KEY=VALUE`` overrides."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

__all__ = ["DEMO_STEPS", "WINDOW_OVERLAP_HELP", "axis_arg", "check_data_arg", "check_overlap", "modality_arg", "parse_overrides",
           "probability_arg", "read_json", "window_arg"]

# ``boltzformer demo``'s training steps: its budget is its wall time (within 15 minutes on 2 cores, about
# 12 measured here), and more steps was the one recipe change that measured better (docs/results.md)
DEMO_STEPS = 1600

WINDOW_OVERLAP_HELP = ("native resolution (models trained with --patch-overlap): slide the model's input window over the image "
                       "with this overlap in [0, 1) and blend with Gaussian weights, instead of resizing the image")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def check_overlap(overlap: float | None) -> None:
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise ValueError(f"--window-overlap must be in [0, 1), got {overlap}")


def check_data_arg(data: str) -> None:
    from boltzformer.data.loading import SYNTHETIC

    for p in data.split(","):
        if p and p != SYNTHETIC and not Path(p).is_dir():
            raise FileNotFoundError(f"--data {p}: no such dataset folder (expected 'synthetic' or a folder with meta.json)")


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def window_arg(window: str | None):
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


def axis_arg(axis: str | None):
    from boltzformer.io.medical import VIEWS

    if axis is None:
        return None
    if axis in ("0", "1", "2"):
        return int(axis)
    if axis not in VIEWS:
        raise ValueError(f"--axis must be one of {sorted(VIEWS)} or 0, 1, 2, got {axis!r}")
    return axis


def modality_arg(modality: str | None) -> str | None:
    if modality is None:
        return None
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9 +_-]{0,31}", modality.strip()):
        raise ValueError(f"--modality expects a modality name such as CT, MR, PET, US (letters, digits, '-'), got {modality!r}")
    return modality.strip()


def probability_arg(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
