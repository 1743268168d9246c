"""What made an output: the checkpoint (SHA-256 and path), the model config, the package version and
commit, and the settings that change the result; and the comparison that decides whether a stored
output is still the one a new run would make.

Every record, report and run folder carries a ``"made_by"`` dict from :func:`made_by`; a rerun keeps a
stored output only when :func:`differences` finds nothing between the stored and the new one.

Hashes are cached by (path, size, mtime), so a checkpoint is hashed once per run, not once per output.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

__all__ = ["differences", "file_sha256", "git_commit", "made_by", "package_version", "tree_fingerprint"]

_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, computed once per (absolute path, size, mtime) in this process."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def tree_fingerprint(path: str | os.PathLike) -> str:
    """A file's SHA-256; for a folder (a DICOM series), a SHA-256 of its files' names, sizes and hashes."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\0{file_sha256(p)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def package_version() -> str:
    from boltzformer import __version__

    return __version__


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree this package runs from, when it is a git checkout (with
    "-dirty" when files differ from it); None for an installed wheel or without git."""
    src = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10)
        if top.returncode != 0 or not (src.parent.parent / ".git").exists():
            return None
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def made_by(checkpoint: str | os.PathLike | None, model_config: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance dict of an output: checkpoint path and SHA-256, model config, settings, version, commit
    (JSON values only, as it reads back from a record: tuples become lists)."""
    return json.loads(json.dumps({
        "checkpoint": None if checkpoint is None else {"path": str(checkpoint), "sha256": file_sha256(checkpoint)},
        "model_config": None if model_config is None else dict(model_config),
        "settings": dict(settings),
        "version": package_version(),
        "commit": git_commit(),
    }))


def differences(stored: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """What differs between a stored ``made_by`` and the current one, as short reasons ("threshold
    0.5 -> 0.3", "checkpoint"); empty when the stored output is what this run would make. The
    checkpoint's path is not compared (a moved file is the same model), its SHA-256 is."""
    if not stored:
        return ["no provenance"]
    reasons = []
    old_ck, new_ck = stored.get("checkpoint") or {}, current.get("checkpoint") or {}
    if old_ck.get("sha256") != new_ck.get("sha256"):
        reasons.append("checkpoint")
    if stored.get("model_config") != current.get("model_config"):
        reasons.append("model config")
    old_s, new_s = stored.get("settings") or {}, current.get("settings") or {}
    for key in sorted(set(old_s) | set(new_s)):
        if old_s.get(key) != new_s.get(key):
            reasons.append(f"{key} {old_s.get(key)!r} -> {new_s.get(key)!r}")
    for key in ("version", "commit"):
        if stored.get(key) != current.get(key):
            reasons.append(f"{key} {stored.get(key)} -> {current.get(key)}")
    return reasons
