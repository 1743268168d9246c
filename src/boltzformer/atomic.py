"""Write files so that a reader never sees half of one: temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_paths", "write_json_atomic", "write_text_atomic"]


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on success rename them all into place, else delete them.

    Example:
        >>> with atomic_paths("mask.png", "overlay.png") as (tmp_mask, tmp_overlay):  # doctest: +SKIP
        ...     mask.save(tmp_mask, format="PNG"); overlay.save(tmp_overlay, format="PNG")
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for p in map(Path, paths):
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
            os.close(fd)
            temps.append((Path(tmp), p))
        yield [t for t, _ in temps]
        for tmp, p in temps:
            os.replace(tmp, p)
    finally:
        for tmp, _ in temps:
            if tmp.exists():
                tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_paths(path) as (tmp,):
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
