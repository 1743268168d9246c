"""The size buckets of a target, by area fraction (mask pixels / image pixels): the one definition that
the synthetic benchmark (:mod:`boltzformer.data.synthetic`) generates to and the evaluation
(:mod:`boltzformer.evaluate`) reports by.

- ``"tiny"``: area fraction < 0.001 (< 0.1 % of the image)
- ``"small"``: 0.001 <= area fraction < 0.01
- ``"large"``: area fraction >= 0.01

Example::

    >>> size_bucket(0.0005), size_bucket(0.001), size_bucket(0.5)
    ('tiny', 'small', 'large')
"""

from __future__ import annotations

import math

__all__ = ["BUCKET_RANGES", "EMPTY_BUCKET", "SIZE_BUCKETS", "SMALL_MAX", "TINY_MAX", "size_bucket"]

SIZE_BUCKETS = ("tiny", "small", "large")  # smallest first
TINY_MAX = 0.001  # area fraction below which a target is "tiny" (< 0.1 % of the image)
SMALL_MAX = 0.01  # area fraction below which a target is "small" (< 1 % of the image)
BUCKET_RANGES = {"tiny": (0.0, TINY_MAX), "small": (TINY_MAX, SMALL_MAX), "large": (SMALL_MAX, 1.0)}  # [low, high)
EMPTY_BUCKET = "empty"  # bucket of samples whose target mask is empty (evaluation only)


def size_bucket(area_fraction: float) -> str:
    """The size bucket of a target: ``"tiny"`` if < 0.001, ``"small"`` if < 0.01, else ``"large"``.

    Raises:
        ValueError: ``area_fraction`` is not a finite number in [0, 1].
    """
    if not (math.isfinite(area_fraction) and 0.0 <= area_fraction <= 1.0):
        raise ValueError(f"area_fraction must be a finite number in [0, 1], got {area_fraction!r}")
    if area_fraction < TINY_MAX:
        return "tiny"
    if area_fraction < SMALL_MAX:
        return "small"
    return "large"
