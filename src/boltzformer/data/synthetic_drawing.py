"""The drawing of the synthetic benchmark (:mod:`boltzformer.data.synthetic`): a scan-like background,
object shapes of a given pixel count, their placement without contact, and their rendering. Every
function draws from the item's own ``numpy`` generator, in the order :func:`~boltzformer.data.synthetic._generate`
calls it (the order is part of the benchmark: changing it changes every item).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

_PLACEMENT_TRIES = 200  # random positions tried for one object before giving up


@dataclass
class _Shape:
    """An object's footprint, cropped to its bounding box."""

    mask: np.ndarray  # bool (h, w): exactly the object's pixels
    inner: np.ndarray  # float32 (h, w): 0 at the outline rising to 1 at the core, 0 outside the mask



@functools.lru_cache(maxsize=64)
def _interp_table(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D linear interpolation with aligned corners: (lower source index, weight of the upper one) per output."""
    pos = np.linspace(0.0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    return lo, (pos - lo).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise (height, width): a grid of N(0, 1) values about ``cells`` per side, upsampled bilinearly.

    The bilinear upsampling (as ``align_corners=True``) is done separably with numpy gathers: at these
    sizes torch's interpolate and BLAS products pay more in thread start-up than in arithmetic.
    """
    cy = max(2, round(cells * height / max(height, width)))
    cx = max(2, round(cells * width / max(height, width)))
    grid = rng.standard_normal((cy, cx), dtype=np.float32)
    lo, f = _interp_table(height, cy)
    rows = grid[lo] * (1.0 - f[:, None]) + grid[lo + 1] * f[:, None]  # (height, cx)
    lo, f = _interp_table(width, cx)
    return rows[:, lo] * (1.0 - f) + rows[:, lo + 1] * f  # (height, width)


def _soft(signed_px: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 to 1 over ``width`` pixels around signed distance 0 (positive inside)."""
    return np.clip(signed_px / width + 0.5, 0.0, 1.0)


def _soft_ellipse(
    s: int, *, cy: float, cx: float, ry: float, rx: float, angle: float, edge: float, level: float = 1.0
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Soft filled ellipse (pixel units) restricted to its bounding box: (window, weight in [0, 1] on it).

    ``level`` < 1 gives the concentric ellipse scaled by ``level``; ``edge`` is the blur width in pixels.
    """
    reach = max(ry, rx) * level + edge + 1.0
    y0, y1 = max(0, int(cy - reach)), min(s, int(math.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(cx - reach)), min(s, int(math.ceil(cx + reach)) + 1)
    y = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    x = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    ca, sa = math.cos(angle), math.sin(angle)
    rho = np.sqrt(((x * ca + y * sa) / rx) ** 2 + ((-x * sa + y * ca) / ry) ** 2)
    return (slice(y0, y1), slice(x0, x1)), _soft((level - rho) * min(ry, rx), edge)


def _background(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray]:
    """A scan-like background: (image float32 (s, s), interior bool (s, s) where objects may lie)."""
    c = np.arange(s, dtype=np.float32) + 0.5  # pixel centres
    y, x = c[:, None], c[None, :]
    cy, cx = s * (0.5 + rng.uniform(-0.03, 0.03)), s * (0.5 + rng.uniform(-0.03, 0.03))
    ay, ax = s * rng.uniform(0.33, 0.40), s * rng.uniform(0.40, 0.46)  # body semi-axes, pixels
    rho = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2) + 0.02 * _smooth_noise(rng, s, s, 4)
    body = _soft((1.0 - rho) * ay, 2.5)

    image = np.full((s, s), rng.uniform(100.0, 125.0), dtype=np.float32)  # soft tissue
    fat = _soft((rho - rng.uniform(0.85, 0.88)) * ay, 3.0)  # subcutaneous fat band
    image -= rng.uniform(25.0, 40.0) * fat
    for _ in range(int(rng.integers(3, 6))):  # organs: soft ellipses brighter or darker than tissue
        r, t = 0.55 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        window, w = _soft_ellipse(
            s, cy=cy + r * ay * math.sin(t), cx=cx + r * ax * math.cos(t), ry=s * rng.uniform(0.06, 0.16),
            rx=s * rng.uniform(0.06, 0.16), angle=rng.uniform(0, math.pi), edge=5.0,
        )
        image[window] += rng.choice([-1.0, 1.0]) * rng.uniform(12.0, 40.0) * w
    if rng.uniform() < 0.5:  # lungs: two dark regions with faint texture
        lung = rng.uniform(25.0, 45.0) + 4.0 * _smooth_noise(rng, s, s, s // 8)
        ly, lx = rng.uniform(0.6, 0.75) * ay, rng.uniform(0.42, 0.55) * ax
        for side in (-1.0, 1.0):
            window, w = _soft_ellipse(
                s, cy=cy - 0.05 * ay + rng.uniform(-0.04, 0.04) * ay, cx=cx + side * lx,
                ry=ly * rng.uniform(0.9, 1.05), rx=ax * rng.uniform(0.2, 0.3), angle=rng.uniform(-0.15, 0.15),
                edge=3.0,
            )
            image[window] = image[window] * (1.0 - w) + lung[window] * w
    if rng.uniform() < 0.6:  # vertebra: bright cortex, greyer marrow
        vr = s * rng.uniform(0.045, 0.06)
        spec = dict(cy=cy + 0.72 * ay, cx=cx, ry=vr, rx=1.2 * vr, angle=0.0, edge=2.0)
        window, w = _soft_ellipse(s, **spec)
        image[window] += (rng.uniform(150.0, 190.0) - image[window]) * w
        window, w = _soft_ellipse(s, **spec, level=0.75)
        image[window] -= rng.uniform(30.0, 50.0) * w

    image *= 1.0 + 0.08 * _smooth_noise(rng, s, s, 3)  # bias field
    image += 4.0 * _smooth_noise(rng, s, s, s // 16) + 2.5 * _smooth_noise(rng, s, s, s // 4)  # texture
    air = rng.uniform(5.0, 20.0)
    image = air + (image - air) * body
    interior = rho < 0.84
    return image.astype(np.float32), interior


def _grid(rng: np.random.Generator, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (v rows, u cols) of a (2 half + 1)^2 patch around a random sub-pixel centre."""
    off_v, off_u = rng.uniform(-0.5, 0.5, size=2)
    v = np.arange(-half, half + 1, dtype=np.float32) - np.float32(off_v)
    u = np.arange(-half, half + 1, dtype=np.float32) - np.float32(off_u)
    return v[:, None], u[None, :]


def _top_k(field: np.ndarray, k: int) -> _Shape | None:
    """The ``k`` pixels with the highest ``field``, cropped; None if they touch the patch border."""
    flat = field.ravel()
    idx = np.argpartition(-flat, k - 1)[:k]
    mask = np.zeros(flat.shape, dtype=bool)
    mask[idx] = True
    mask = mask.reshape(field.shape)
    if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        return None
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    mask, field = mask[window], field[window]
    low, high = float(field[mask].min()), float(field[mask].max())
    inner = np.where(mask, (field - low) / max(high - low, 1e-6), 0.0).astype(np.float32)
    return _Shape(mask=mask, inner=inner)


def _build_shape(rng: np.random.Generator, kind: str, k: int, s: int) -> _Shape:
    """A footprint of exactly ``k`` pixels for an object of ``kind`` (s: image size, bounds vessel length)."""
    r = math.sqrt(k / math.pi)  # radius of a disc of k pixels
    angle = rng.uniform(0.0, math.pi)
    ca, sa = math.cos(angle), math.sin(angle)
    if kind in ("nodule", "cyst"):
        aspect = rng.uniform(1.0, 1.25) if kind == "nodule" else rng.uniform(1.0, 1.8)
        a, b = r * math.sqrt(aspect), r / math.sqrt(aspect)
        half = int(math.ceil(a * 1.3)) + 3
        def field(v, u):  # noqa: E306 - 1 inside the centre, 0 on the ellipse of area k
            p, q = u * ca + v * sa, -u * sa + v * ca
            return 1.0 - np.sqrt((p / a) ** 2 + (q / b) ** 2)
    elif kind == "lesion":
        orders = np.arange(2, 6)
        amps = rng.uniform(0.0, 0.16, size=orders.size) / np.sqrt(orders - 1)
        phases = rng.uniform(0.0, 2 * math.pi, size=orders.size)
        theta = np.linspace(0, 2 * math.pi, 256, endpoint=False)
        radial = 1.0 + (amps[:, None] * np.cos(orders[:, None] * theta + phases[:, None])).sum(0)
        r0 = r / math.sqrt(float((radial**2).mean()))
        half = int(math.ceil(r0 * radial.max() * 1.3)) + 3
        def field(v, u):  # noqa: E306 - 1 - d / R(theta): level sets are scaled copies of the outline
            t = np.arctan2(v, u)
            rt = 1.0 + (amps[:, None, None] * np.cos(orders[:, None, None] * t + phases[:, None, None])).sum(0)
            return 1.0 - np.sqrt(u**2 + v**2) / (r0 * rt)
    elif kind == "calcification":
        m = int(rng.integers(1, 3 if k < 30 else 5))  # specks in the cluster
        radii = rng.uniform(0.6, 1.0, size=m)
        rs = math.sqrt(k / (math.pi * float((radii**2).sum())))  # speck radius scale
        centres = [np.zeros(2)]
        for _ in range(m - 1):
            t = rng.uniform(0.0, 2 * math.pi)
            step = rng.uniform(1.6, 2.6) * rs
            centres.append(centres[int(rng.integers(len(centres)))] + step * np.array([math.sin(t), math.cos(t)]))
        centres = np.stack(centres) - np.mean(centres, axis=0)
        half = int(math.ceil(np.abs(centres).max() + 1.5 * rs)) + 3
        def field(v, u):  # noqa: E306 - the best of the specks' normalised distances
            d = [1.0 - np.sqrt((v - cv) ** 2 + (u - cu) ** 2) / (rs * rr) for (cv, cu), rr in zip(centres, radii)]
            return np.max(np.stack(d), axis=0)
    elif kind == "vessel segment":
        ratio = rng.uniform(4.0, 10.0)
        width = max(math.sqrt(k / ratio), k / (0.4 * s), 1.5)  # k = width * length (length <= 0.4 s)
        length = k / width
        bend = rng.uniform(-0.35, 0.35)
        t = np.linspace(0.0, 1.0, 13)[:, None]
        p0, p1, p2 = np.array([-length / 2, 0.0]), np.array([0.0, bend * length]), np.array([length / 2, 0.0])
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier, (u, v) rows
        curve = curve @ np.array([[ca, sa], [-sa, ca]])  # rotate
        a_pts, d_pts = curve[:-1], curve[1:] - curve[:-1]
        half = int(math.ceil(np.abs(curve).max() + width)) + 3
        def field(v, u):  # noqa: E306 - minus the distance to the centre line (a polyline)
            pu, pv = u[..., None], v[..., None]
            du, dv = d_pts[:, 0], d_pts[:, 1]
            tt = np.clip(((pu - a_pts[:, 0]) * du + (pv - a_pts[:, 1]) * dv) / (du**2 + dv**2 + 1e-9), 0.0, 1.0)
            dist2 = (pu - a_pts[:, 0] - tt * du) ** 2 + (pv - a_pts[:, 1] - tt * dv) ** 2
            return -np.sqrt(dist2.min(axis=-1))
    else:  # pragma: no cover - kinds come from KINDS
        raise AssertionError(kind)
    while True:
        v, u = _grid(rng, half)
        shape = _top_k(np.asarray(field(v, u), dtype=np.float32), k)
        if shape is not None:
            return shape
        half = int(half * 1.5) + 2  # the footprint reached the patch border: widen the patch


def _place(
    rng: np.random.Generator,
    mask: np.ndarray,
    interior: np.ndarray,
    occupied: np.ndarray,
    iy: np.ndarray,
    ix: np.ndarray,
) -> tuple[int, int] | None:
    """Top-left corner where ``mask`` lies inside ``interior`` and off ``occupied``; None after many tries."""
    s = interior.shape[0]
    h, w = mask.shape
    if h > s or w > s:
        return None
    for _ in range(_PLACEMENT_TRIES):
        j = int(rng.integers(len(iy)))
        y0, x0 = int(iy[j]) - h // 2, int(ix[j]) - w // 2
        if y0 < 0 or x0 < 0 or y0 + h > s or x0 + w > s:
            continue
        window = (slice(y0, y0 + h), slice(x0, x0 + w))
        if interior[window][mask].all() and not occupied[window][mask].any():
            return y0, x0
    return None


def _mark(occupied: np.ndarray, mask: np.ndarray, y0: int, x0: int, gap: int) -> None:
    """Marks ``mask`` (top-left at y0, x0), grown by ``gap`` pixels (square), as occupied."""
    s = occupied.shape[0]
    h, w = mask.shape
    grown = np.zeros((h + 2 * gap, w + 2 * gap), dtype=bool)
    for dy in range(2 * gap + 1):  # separable square dilation: rows then columns
        grown[dy : dy + h, gap : gap + w] |= mask
    rows = grown.copy()
    for dx in range(-gap, gap + 1):
        grown[:, max(0, dx) : grown.shape[1] + min(0, dx)] |= rows[:, max(0, -dx) : rows.shape[1] - max(0, dx)]
    top, left = y0 - gap, x0 - gap
    ys, xs = slice(max(0, top), min(s, top + grown.shape[0])), slice(max(0, left), min(s, left + grown.shape[1]))
    occupied[ys, xs] |= grown[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left]


def _render(rng: np.random.Generator, patch: np.ndarray, kind: str, shape: _Shape) -> None:
    """Draws the object into ``patch`` (a view of the image) in place; nothing outside ``shape.mask`` changes."""
    m, q = shape.mask, shape.inner
    bg = float(patch[m].mean())
    target = np.zeros(m.shape, dtype=np.float32)
    if kind == "nodule":  # bright, soft edge
        target += bg + rng.uniform(60.0, 100.0)
        alpha = 0.65 + 0.35 * np.sqrt(q)
    elif kind == "cyst":  # dark, homogeneous, maybe a thin bright rim
        target += max(bg - rng.uniform(45.0, 75.0), 4.0)
        alpha = np.full(m.shape, 0.95, dtype=np.float32)
        r = math.sqrt(m.sum() / math.pi)
        if r >= 4.0 and rng.uniform() < 0.5:
            rim = q < 1.2 / r
            target[rim] = bg + rng.uniform(20.0, 35.0)
    elif kind == "calcification":  # very bright, compact
        target += min(255.0, max(bg + 90.0, rng.uniform(230.0, 255.0)))
        alpha = 0.85 + 0.15 * q
    elif kind == "lesion":  # moderate contrast, mottled
        sign = 1.0 if rng.uniform() < 0.6 or bg < 80.0 else -1.0  # never darker than a dark surrounding
        h, w = m.shape
        texture = 14.0 * _smooth_noise(rng, h, w, max(3, max(h, w) // 4))
        target += bg + sign * rng.uniform(28.0, 42.0) + texture
        alpha = 0.8 + 0.2 * q
    else:  # vessel segment: bright tube
        target += bg + rng.uniform(60.0, 95.0)
        alpha = 0.7 + 0.3 * q
    patch[m] = patch[m] * (1.0 - alpha[m]) + target[m] * alpha[m]
