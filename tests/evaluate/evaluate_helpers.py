"""Mask builders shared by the tests of boltzformer.evaluate (imported by the test files and conftest)."""

from __future__ import annotations

import numpy as np
import torch


def masks(*coords_per_sample, size=(10, 10)) -> torch.Tensor:
    """(B, 1, H, W) 0/1 float masks with the given (row, col) pixels set."""
    out = torch.zeros(len(coords_per_sample), 1, *size)
    for b, coords in enumerate(coords_per_sample):
        for r, c in coords:
            out[b, 0, r, c] = 1
    return out


def _square(r0, c0, h, w):
    return [(r, c) for r in range(r0, r0 + h) for c in range(c0, c0 + w)]


def _mask(size, *boxes):
    """A (H, W) bool mask with the given (row0, col0, height, width) boxes set."""
    m = np.zeros(size, bool)
    for r, c, h, w in boxes:
        m[r : r + h, c : c + w] = True
    return m
