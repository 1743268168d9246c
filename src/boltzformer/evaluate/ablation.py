"""The summary of an ablation grid (``boltzformer ablate --summary DIR``): Dice by size bucket per
setting with bootstrap confidence intervals, and the paired difference to the default setting.

Each cell file (``DIR/cells/*.json``, written by :mod:`boltzformer.train.ablate`) holds one Dice per
test image. For a setting, the Dice values form a (seeds x images) matrix; its mean is the setting's
Dice, and its 95 % interval comes from a crossed bootstrap (:func:`bootstrap_ci`): seeds and images
are resampled with replacement independently, so that both the training noise (seeds) and the test
sample (images) widen it. The difference to the default is the same on the matrix of paired
differences (same seed, same image, one setting changed). The bootstrap is written here with numpy
(scipy.stats.bootstrap resamples one axis only, not seeds and images crossed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from boltzformer.io.atomic import atomic_paths, write_json_atomic, write_text_atomic
from boltzformer.evaluate.metrics import SIZE_BUCKETS

__all__ = ["BUCKETS", "CELL_FORMAT", "bootstrap_ci", "load_cells", "summarize_cells", "summary_markdown", "write_summary"]

BUCKETS = (*SIZE_BUCKETS, "all")
CELL_FORMAT = 1  # the format of a cell file (written by boltzformer.train.ablate, read here)
N_BOOT = 4000


def bootstrap_ci(values: Any, *, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a (seeds x images) matrix and its percentile bootstrap interval, seeds and images resampled
    independently with replacement (a crossed bootstrap).

    Example:
        >>> bootstrap_ci([[0.0] * 5, [1.0] * 5])  # two seeds, one all 0, one all 1: the mean of 2 draws
        (0.5, 0.0, 1.0)

    Raises:
        ValueError: not a non-empty 2-D matrix, non-finite values, or a level outside (0, 1).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"values must be a non-empty (seeds, images) matrix, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    S, N = v.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 500):  # chunks keep the (chunk, S, N) array small
        b = min(500, n_boot - start)
        rows = rng.integers(0, S, size=(b, S))
        cols = rng.integers(0, N, size=(b, N))
        # mean over the resampled seeds of each resampled seed's mean over the resampled images
        means[start : start + b] = v[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(v.mean()), float(lo), float(hi)


def load_cells(folder: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """The complete cell records under ``folder/cells`` and the names of the files that are not."""
    cells_dir = Path(folder) / "cells"
    if not cells_dir.is_dir():
        raise FileNotFoundError(f"--summary {folder}: no 'cells' folder; expected the --out folder of a boltzformer ablate run")
    cells, skipped = [], []
    for path in sorted(cells_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ok = data.get("format") == CELL_FORMAT and data.get("complete") is True and data.get("images")
        except (ValueError, AttributeError, UnicodeDecodeError):
            ok = False
        if ok:
            cells.append(data)
        else:
            skipped.append(path.name)
    return cells, skipped


def _matrix(by_seed: dict[int, dict[str, float]], seeds: Sequence[int], ids: Sequence[str]) -> np.ndarray:
    return np.array([[by_seed[s][i] for i in ids] for s in seeds], dtype=np.float64)


def summarize_cells(cells: Sequence[dict[str, Any]], *, order: Sequence[str] = (), default: str = "default",
                    level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> list[dict[str, Any]]:
    """One row per setting: seeds, and per bucket (tiny, small, large, all) the mean Dice with its interval and
    the paired difference to ``default`` with its interval (on the seeds and images both settings have).

    Settings come in ``order`` first, then the others by name."""
    per: dict[str, dict[int, dict[str, float]]] = {}
    bucket_of: dict[str, str] = {}
    meta: dict[str, dict[str, Any]] = {}
    for c in cells:
        per.setdefault(c["setting"], {})[int(c["seed"])] = {r["id"]: float(r["dice"]) for r in c["images"]}
        bucket_of.update({r["id"]: r["bucket"] for r in c["images"]})
        meta.setdefault(c["setting"], {"axis": c.get("axis"), "value": c.get("value"), "model": c["config"]["model"],
                                       "wall_seconds": []})["wall_seconds"].append(c["wall_seconds"]["total"])
    names = [s for s in order if s in per] + sorted(s for s in per if s not in order)
    rows = []
    for k, name in enumerate(names):
        seeds = sorted(per[name])
        common = set.intersection(*(set(per[name][s]) for s in seeds))
        row: dict[str, Any] = {"setting": name, **{k2: v for k2, v in meta[name].items() if k2 != "wall_seconds"},
                               "seeds": seeds, "n_images": len(common),
                               "mean_wall_seconds": round(float(np.mean(meta[name]["wall_seconds"])), 1),
                               "dice": {}, "delta": {}}
        for b in BUCKETS:
            ids = sorted(i for i in common if b == "all" or bucket_of[i] == b)
            if ids:
                # seed + k (setting k's own resamples), not a SeedSequence spawn: the committed ablation
                # summaries (docs/) were drawn with these seeds and would change
                mean, lo, hi = bootstrap_ci(_matrix(per[name], seeds, ids), level=level, n_boot=n_boot, seed=seed + k)
                row["dice"][b] = {"mean": mean, "lo": lo, "hi": hi, "n": len(ids)}
            if name != default and default in per:
                pseeds = sorted(set(seeds) & set(per[default]))
                pids = sorted(i for i in common if (b == "all" or bucket_of[i] == b) and all(i in per[default][s] for s in pseeds))
                if pseeds and pids:
                    diff = _matrix(per[name], pseeds, pids) - _matrix(per[default], pseeds, pids)
                    mean, lo, hi = bootstrap_ci(diff, level=level, n_boot=n_boot, seed=seed + k)
                    row["delta"][b] = {"mean": mean, "lo": lo, "hi": hi, "n": len(pids), "seeds": pseeds}
        rows.append(row)
    return rows


def _ci(x: dict[str, Any] | None, signed: bool = False) -> str:
    if not x:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(x['mean'])} [{f.format(x['lo'])}, {f.format(x['hi'])}]"


def summary_markdown(rows: Sequence[dict[str, Any]], *, title: str = "Ablation", level: float = 0.95) -> str:
    """The summary as two Markdown tables: Dice per setting, and the paired difference to the default."""
    pct = f"{100 * level:g} %"
    head = "| setting | seeds | images | " + " | ".join(BUCKETS) + " | min/cell |"
    sep = "|" + "---|" * (len(BUCKETS) + 4)
    lines = [f"## {title}", "", f"Dice, mean [{pct} bootstrap interval over seeds and test images]:", "", head, sep]
    for r in rows:
        lines.append(f"| {r['setting']} | {len(r['seeds'])} | {r['n_images']} | "
                     + " | ".join(_ci(r["dice"].get(b)) for b in BUCKETS) + f" | {r['mean_wall_seconds'] / 60:.1f} |")
    lines += ["", f"Paired difference to the default (same seed, same image), mean [{pct} interval]; "
              "an interval that excludes 0 is a measured effect:", "",
              "| setting | seeds | " + " | ".join(f"Δ {b}" for b in BUCKETS) + " |", "|" + "---|" * (len(BUCKETS) + 2)]
    for r in rows:
        if r["delta"]:
            seeds = next(iter(r["delta"].values()))["seeds"]
            lines.append(f"| {r['setting']} | {len(seeds)} | " + " | ".join(_ci(r["delta"].get(b), signed=True) for b in BUCKETS) + " |")
    if any(len(r["seeds"]) == 1 for r in rows):
        lines += ["", "A row with one seed has an interval over the test images only: it leaves out the training noise "
                  "between seeds, which is the larger part here."]
    return "\n".join(lines) + "\n"


def _figure(rows: Sequence[dict[str, Any]], path: Path, title: str, level: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 0.35 * len(rows) * len(BUCKETS) / 2 + 2.5), sharey=True)
    colors = {"tiny": "tab:red", "small": "tab:orange", "large": "tab:blue", "all": "black"}
    ys = np.arange(len(rows))[::-1]
    for ax, key, label in ((axes[0], "dice", "Dice"), (axes[1], "delta", "Dice - default (paired)")):
        for j, b in enumerate(BUCKETS):
            off = (j - (len(BUCKETS) - 1) / 2) * 0.18
            pts = [(y + off, r[key][b]) for y, r in zip(ys, rows) if b in r[key]]
            if not pts:
                continue
            y, v = zip(*pts)
            m = np.array([x["mean"] for x in v])
            err = np.array([[x["mean"] - x["lo"] for x in v], [x["hi"] - x["mean"] for x in v]])
            ax.errorbar(m, y, xerr=err, fmt="o", ms=4, capsize=2, color=colors[b], label=b)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        if key == "delta":
            ax.axvline(0, color="grey", lw=1)
    axes[0].set_yticks(ys, [r["setting"] for r in rows])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(BUCKETS), fontsize=8)
    fig.suptitle(title + f": mean and {100 * level:g} % bootstrap interval", fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    with atomic_paths(path) as (tmp,):
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_summary(folder: str | os.PathLike, *, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Summarise ``folder``'s finished cells into ``summary.md``, ``summary.json`` and ``summary.png`` there."""
    folder = Path(folder)
    cells, skipped = load_cells(folder)
    if not cells:
        raise ValueError(f"--summary {folder}: no finished cell in {folder / 'cells'}" + (f" ({len(skipped)} incomplete)" if skipped else ""))
    grid_file = folder / "grid.json"
    order = json.loads(grid_file.read_text(encoding="utf-8")).get("settings", []) if grid_file.is_file() else []
    rows = summarize_cells(cells, order=order, level=level, n_boot=n_boot, seed=seed)
    commits = sorted({str(c.get("commit")) + ("+changes" if c.get("dirty") else "") for c in cells})
    title = f"boltzformer ablate: {folder.name} ({len(cells)} cells)"
    md = summary_markdown(rows, title=title, level=level)
    md += (f"\nMade by `boltzformer ablate --summary {folder}` from {len(cells)} cell files (commits: {', '.join(commits)}); "
           f"{n_boot} bootstrap draws, seed {seed}." + (f" Incomplete cells left out: {', '.join(skipped)}." if skipped else "") + "\n")
    result = {"title": title, "level": level, "n_boot": n_boot, "bootstrap_seed": seed, "cells": len(cells),
              "skipped": skipped, "commits": commits, "rows": rows}
    write_text_atomic(folder / "summary.md", md)
    write_json_atomic(result, folder / "summary.json")
    _figure(rows, folder / "summary.png", title, level)
    result["markdown"] = md
    return result
