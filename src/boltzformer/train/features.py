"""A cache of a frozen image encoder's features, so that training and evaluating with a pretrained
encoder (the ``lite`` preset) encode each image once.

An entry is keyed by SHA-256 of three things, so that it is never reused when any of them changes:

- the encoder: every tensor of the backbone's state (names, dtypes, shapes, values), re-hashed
  whenever a tensor was changed in place (``load_state_dict``, an optimiser step) or replaced;
- the image: the bytes of the normalised input (3, H, W) float32, i.e. its content *after* the
  model's preprocessing (pixel mean / std), at the size the encoder sees it;
- the preprocessing and storage: the backbone's class, the input size, the normalisation and the
  stored dtype.

Entries are files ``<root>/<key[:2]>/<key>.pt`` written atomically (temporary name, then rename),
so that several processes may share a root. Backbones with a parameter-free pyramid over one map
(:class:`~boltzformer.model.backbones.TinyViTBackbone`) store that map only and rebuild the pyramid.

The cache is for frozen encoders: it refuses to serve a backbone that would be trained (gradients
enabled and parameters that require them), since cached features have no gradient, or one in train
mode (BatchNorm statistics would change under it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from boltzformer.io.atomic import atomic_paths

__all__ = ["FeatureCache", "encoder_digest"]

_STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def encoder_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state: every parameter and buffer's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FeatureCache:
    """Backbone features of normalised images, computed once and read back from ``root``.

    Args:
        root: folder of the entries (created when needed).
        dtype: stored precision, "float16" (default: half the disk, features rounded to ~1e-3 relative),
            "bfloat16" or "float32" (exact).

    Example:
        >>> model.feature_cache = FeatureCache(root="runs/cache")  # doctest: +SKIP
        >>> model.encode_image(images)  # the backbone runs once per distinct image  # doctest: +SKIP
    """

    def __init__(self, *, root: str | os.PathLike, dtype: str = "float16") -> None:
        if dtype not in _STORE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_STORE_DTYPES)}, got {dtype!r}")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"feature cache root {self.root} exists and is not a folder")
        self.dtype = dtype
        self.hits = 0
        self.misses = 0
        self._digest_memo: tuple[tuple, str] | None = None

    def _encoder_digest(self, backbone: nn.Module) -> str:
        # re-hash only when a tensor was replaced or changed in place (torch bumps ``_version`` on
        # in-place writes: load_state_dict, optimiser steps, ``.copy_``)
        state = tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in backbone.state_dict(keep_vars=True).values())
        if self._digest_memo is None or self._digest_memo[0] != state:
            self._digest_memo = (state, encoder_digest(backbone))
        return self._digest_memo[1]

    def keys(self, backbone: nn.Module, images: Tensor, preprocessing: str = "") -> list[str]:
        """The cache key of each normalised image (B, 3, H, W) for ``backbone``."""
        encoder = self._encoder_digest(backbone)
        B, _, H, W = images.shape
        prefix = f"{type(backbone).__name__}|{H}x{W}|{self.dtype}|{preprocessing}|{encoder}|".encode()
        out = []
        for image in images.detach().float().cpu().contiguous():
            h = hashlib.sha256(prefix)
            h.update(image.reshape(-1).view(torch.uint8).numpy().tobytes())
            out.append(h.hexdigest())
        return out

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def features(self, backbone: nn.Module, images: Tensor, *, preprocessing: str = "") -> dict[str, Tensor]:
        """``backbone(images)`` for normalised images (B, 3, H, W), each image read from the cache when
        it holds an entry for this encoder and preprocessing, else computed and stored.

        Raises:
            RuntimeError: the backbone would be trained (gradients enabled and parameters requiring them).
        """
        if torch.is_grad_enabled() and any(p.requires_grad for p in backbone.parameters()):
            raise RuntimeError("the feature cache serves frozen encoders only: freeze the backbone (train --freeze backbone)")
        if backbone.training:
            # in train mode BatchNorm would update its statistics: the encoder would change under its cache
            raise RuntimeError("the feature cache serves encoders in eval mode: call backbone.eval() (frozen parts of "
                               "BoltzFormerModule are kept in eval mode)")
        keys = self.keys(backbone, images, preprocessing)
        found: list[dict[str, Tensor] | None] = []
        for key in keys:
            path = self._path(key)
            entry = None
            if path.is_file():
                try:
                    entry = torch.load(path, map_location="cpu", weights_only=True)
                except Exception:  # a damaged entry is recomputed and rewritten
                    entry = None
            found.append(entry)
        todo = [i for i, e in enumerate(found) if e is None]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            with torch.no_grad():
                computed = self._stored_form(backbone, images[todo])
            store = _STORE_DTYPES[self.dtype]
            for j, i in enumerate(todo):
                entry = {name: t[j].to(store).cpu().clone() for name, t in computed.items()}
                with atomic_paths(self._path(keys[i])) as (tmp,):
                    torch.save(entry, tmp)
                found[i] = entry
        stacked = {name: torch.stack([e[name] for e in found]).to(images.device, images.dtype)  # type: ignore[index]
                   for name in found[0]}  # type: ignore[union-attr]
        return self._expand(backbone, stacked)

    @staticmethod
    def _stored_form(backbone: nn.Module, images: Tensor) -> dict[str, Tensor]:
        if hasattr(backbone, "forward_neck") and hasattr(backbone, "pyramid"):
            return {"neck": backbone.forward_neck(images)}  # the pyramid is rebuilt on reading
        return dict(backbone(images))

    @staticmethod
    def _expand(backbone: nn.Module, stored: dict[str, Tensor]) -> dict[str, Tensor]:
        if set(stored) == {"neck"}:
            return backbone.pyramid(stored["neck"])
        return stored

    def fill(self, backbone: nn.Module, images: Sequence[Tensor], *, batch_size: int = 4, preprocessing: str = "") -> int:
        """Make sure every normalised image (3, H, W) of ``images`` (same size) has an entry; returns the
        number computed."""
        before = self.misses
        for start in range(0, len(images), batch_size):
            self.features(backbone, torch.stack(list(images[start : start + batch_size])), preprocessing=preprocessing)
        return self.misses - before

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r}, dtype={self.dtype!r}, hits={self.hits}, misses={self.misses})"
