"""Saving and loading boltzformer checkpoints.

A checkpoint is a ``torch.save`` dict that holds, besides the weights, a ``"boltzformer"`` entry
with the format version and the :class:`~boltzformer.config.ModelConfig` that rebuilds the model.
Lightning's ``last.ckpt`` files from ``boltzformer train`` carry it too (weights under
``state_dict`` with a ``model.`` prefix). Loading uses ``weights_only=True`` and strict key
checking: a file that is not one of ours, or does not fit, is a :class:`CheckpointError`. The
config records the text tokenizer the weights were trained with (``text.tokenizer``); loading with
another one is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from boltzformer.io.atomic import atomic_paths
from boltzformer.config import ModelConfig, config_from_dict, config_to_dict
from boltzformer.model import BoltzFormer, build_model

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "checkpoint_metadata", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_KEY = "boltzformer"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit."""


def checkpoint_metadata(model: BoltzFormer) -> dict[str, Any]:
    if model.config is None:
        raise ValueError("the model has no config; build it with boltzformer.build_model")
    return {"format": FORMAT_VERSION, "model_config": config_to_dict(model.config)}


def save_checkpoint(model: BoltzFormer, path: str | os.PathLike, **extra: Any) -> Path:
    """Write the model's weights and config to ``path`` atomically (temporary file, then rename)."""
    payload = {_KEY: checkpoint_metadata(model), "state_dict": model.state_dict(), **extra}
    with atomic_paths(path) as (tmp,):
        torch.save(payload, tmp)
    return Path(path)


def _load_error(exc: Exception) -> str:
    """torch.load's error in one whole line: its message without colour codes and line breaks; for the
    long weights-only refusal, the part that says what was refused."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|Check the documentation|$)", text, re.S)
        detail = " ".join(found.group(1).split()) if found and found.group(1).strip() else "an object that is not a tensor or a plain value"
        return (f"it holds Python objects that torch.load(weights_only=True) refuses ({detail}); "
                "boltzformer loads only files of tensors and plain values")
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; expected a .ckpt or .pt file")
    try:

        data = torch_load(path)  # memory-mapped where the format allows
    except Exception as exc:  # torch raises many kinds for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} could not be read as a torch file (one written by torch.save): {_load_error(exc)}") from None
    if not isinstance(data, dict) or _KEY not in data:
        kind = type(data).__name__
        keys = sorted(data)[:5] if isinstance(data, dict) else []
        raise CheckpointError(
            f"checkpoint {path} is not a boltzformer checkpoint: expected a dict with a '{_KEY}' entry, "
            f"found a {kind}" + (f" with keys {keys}" if keys else "")
        )
    return data


def torch_load(path: Path):
    """``torch.load`` with ``weights_only=True`` on CPU, memory-mapped where the file's format allows."""
    try:  # memory-mapped: tensors are read from the file when used (zip-format files, torch >= 2.1)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # the legacy (pre-zip) format


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu", **overrides: Any) -> BoltzFormer:
    """Rebuild the model saved in ``path`` and load its weights strictly.

    ``overrides`` change settings that do not affect the weights (e.g. ``attention="full"``).
    """
    path = Path(path)
    data = _read(path)
    meta = data[_KEY]
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')}, this version reads {FORMAT_VERSION}")
    try:
        cfg = config_from_dict(ModelConfig, meta["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from None
    model = build_model(cfg, **overrides)
    if model.config.text.tokenizer != cfg.text.tokenizer:
        raise CheckpointError(
            f"checkpoint {path} was trained with the {cfg.text.tokenizer!r} tokenizer, not the configured "
            f"{model.config.text.tokenizer!r}: its text weights expect {cfg.text.tokenizer!r} token ids"
        )
    state = data["state_dict"]
    if any(k.startswith("model.") for k in state):  # a Lightning checkpoint
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit its own config: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    return model.to(map_location).eval()
