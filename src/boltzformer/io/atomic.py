"""Write files so that a reader never sees half of one: temporary name in the same folder, then rename.

Also: :func:`check_output`, which every command calls on its output paths before doing the work, and
:func:`make_temp_dir`. Files and folders made here get the permissions the umask gives (0644 and 0755
under umask 022), not ``mkstemp`` / ``mkdtemp``'s private 0600 / 0700, so that colleagues on a shared
server can read the results.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["OutputPathError", "atomic_paths", "check_output", "make_temp_dir", "write_json_atomic", "write_text_atomic"]


class OutputPathError(ValueError):
    """An output path that cannot be written (wrong kind, missing parent folder, no permission)."""


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``parent``, then given the umask's permissions (0755 under 022)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, 0o777 & ~_umask())
    return path


def check_output(path: str | os.PathLike, *, kind: str = "file", arg: str = "--out") -> Path:
    """Check before any work that ``path`` can be written: a ``kind`` "file" must not be a folder, a
    "folder" must not be a file; missing parent folders are made later, so the nearest one that exists
    must be a folder, writable; no ancestor may be a file.

    Raises:
        OutputPathError: one line naming ``arg``, the path and what is wrong.
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    p = Path(path)
    if str(path) == "":
        raise OutputPathError(f"{arg} is empty; expected a {kind} path")
    if kind == "file" and p.is_dir():
        raise OutputPathError(f"{arg} {p} is a folder; expected a file path")
    if kind == "folder" and p.exists() and not p.is_dir():
        raise OutputPathError(f"{arg} {p} is a file; expected a folder")
    existing = p if p.is_dir() else p.absolute().parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{arg} {p}: {existing} is a file, so no folder can be made inside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{arg} {p}: no permission to write in {existing}")
    return p


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on success rename them all into place, else delete them.
    The files get the umask's permissions (0644 under 022).

    Example:
        >>> with atomic_paths("mask.png", "overlay.png") as (tmp_mask, tmp_overlay):  # doctest: +SKIP
        ...     mask.save(tmp_mask, format="PNG"); overlay.save(tmp_overlay, format="PNG")
    """
    temps: list[tuple[Path, Path]] = []
    mode = 0o666 & ~_umask()
    try:
        for p in map(Path, paths):
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
            os.fchmod(fd, mode)  # mkstemp makes 0600 whatever the umask
            os.close(fd)
            temps.append((Path(tmp), p))
        yield [t for t, _ in temps]
        for tmp, p in temps:
            os.chmod(tmp, mode)  # writers that replace the file (e.g. torch.save) keep the mode; be sure
            os.replace(tmp, p)
    finally:
        for tmp, _ in temps:
            if tmp.exists():
                tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_paths(path) as (tmp,):
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_safe(obj: Any) -> Any:
    """``obj`` with every string made encodable as UTF-8: file names that are not valid UTF-8 reach
    Python as lone surrogates (``os.fsdecode``); they are written as ``\\xNN`` escapes of their bytes."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            try:
                return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:  # a surrogate that is not an undecodable byte
                return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, dict):
        return {json_safe(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """JSON, UTF-8, for any file name in it (see :func:`json_safe`)."""
    return write_text_atomic(path, json.dumps(json_safe(obj), indent=2, ensure_ascii=False) + "\n")
