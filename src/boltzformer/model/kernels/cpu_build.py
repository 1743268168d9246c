"""Build and load the C kernels of :mod:`boltzformer.model.kernels.cpu`, once per process.

The sources are the files in ``csrc/`` (shipped as package data). The first call compiles them with
the system C compiler (``$CC``, else ``cc``, else ``gcc``) into one shared library in the user cache
directory (``$XDG_CACHE_HOME/boltzformer/kernels``, else ``~/.cache/boltzformer/kernels``), named by
a hash of the sources, the compiler and the CPU (the library is built with ``-march=native``); later
processes load it from there. No build step at install time, no Python headers, no ``ninja``: the
library exports plain C functions that take pointers, loaded with :mod:`ctypes` and declared below.

Why not ``torch.utils.cpp_extension.load``: it compiles against torch's C++ headers and pybind11 and
needs ``ninja``, for functions that need nothing from torch but the tensors' data pointers. The
plain C build takes 1.5 s (gcc 12, -O3, both files; measured on the development machine).

When the library cannot be built or loaded (no compiler, a compile error, an unwritable cache),
:func:`library` returns None, warns once with the reason, and the callers use PyTorch's operations,
which give the same results and draw the same random numbers (tested); ``BOLTZFORMER_CPU_KERNELS=0``
asks for that path without trying a build (checked by :func:`boltzformer.model.kernels.cpu.available`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

__all__ = ["SOURCES", "library", "failure"]

#: the C sources, compiled together into one library
SOURCES = tuple(Path(__file__).with_name("csrc") / name for name in ("sampled_attention.c", "draws.c"))

_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
#: full-width AVX-512 where the CPU has it (gcc and clang default to 256-bit vectors): the gathers run
#: 1.3-1.9x faster with it on an Ice Lake Xeon; dropped for a compiler without the option
_WIDE = "-mprefer-vector-width=512"

#: [(library or None, why it is None)] once tried; a list so that tests can replace it to try again
_loaded: list[tuple[ctypes.CDLL | None, str | None]] = []


class BuildError(Exception):
    """Why the library could not be built or loaded (the message names the reason)."""


def _compiler() -> str:
    given = os.environ.get("CC")
    if given:
        found = shutil.which(given)
        if found is None:
            raise BuildError(f"the C compiler CC={given!r} was not found")
        return found
    found = shutil.which("cc") or shutil.which("gcc")
    if found is None:
        raise BuildError("no C compiler found (install gcc, or set CC)")
    return found


def _cpu() -> str:
    """What names the CPU the library is built for (-march=native)."""
    cpu = platform.processor() + platform.machine()
    try:
        cpu += next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return cpu


def _compile(cc: str, out: Path) -> None:
    """Compiles the sources into ``out``; raises :class:`BuildError` with the compiler's message."""
    base = [cc, *_FLAGS, *map(str, SOURCES), "-o", str(out)]
    try:
        try:
            subprocess.run(base + [_WIDE], check=True, capture_output=True, text=True, timeout=300)
        except subprocess.CalledProcessError:  # a compiler without the option: try without it
            subprocess.run(base, check=True, capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as e:
        lines = [line for line in (e.stderr or "").splitlines() if line.strip()]
        detail = lines[0] if lines else f"exit status {e.returncode}"
        raise BuildError(f"{Path(cc).name} failed on the kernels' sources: {detail}") from e
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"{Path(cc).name} took more than {e.timeout:.0f} s") from e
    except OSError as e:
        raise BuildError(f"could not run the C compiler {cc}: {e}") from e


def _build() -> ctypes.CDLL:
    cc = _compiler()
    try:
        text = b"".join(path.read_bytes() for path in SOURCES)
    except OSError as e:
        raise BuildError(f"the kernels' C sources are missing from the installed package: {e}") from e
    key = hashlib.sha256(text + (cc + _cpu() + " ".join(_FLAGS) + _WIDE).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "boltzformer" / "kernels"
    lib = cache / f"sampled_{key}.so"
    if not lib.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                out = Path(tmp) / "kernels.so"
                _compile(cc, out)
                os.replace(out, lib)  # atomic: concurrent builders each put a whole file
        except OSError as e:
            raise BuildError(f"could not write the library into {cache}: {e}") from e
    try:
        dll = ctypes.CDLL(str(lib))
    except OSError as e:
        raise BuildError(f"could not load {lib}: {e}") from e
    _declare(dll)
    return dll


def _declare(dll: ctypes.CDLL) -> None:
    """The C signatures (see the sources): pointers, int64 sizes, an int thread count."""
    p, i64, i32, u64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_uint64
    dll.plan_runs.argtypes = [p, p, i64, i64, i64, i64, i64, i64, i64, p, p, i32]
    dll.plan_fill.argtypes = [p, p, i64, i64, i64, i64, i64, i64, p, p, p, i32]
    dll.plan_sddmm.argtypes = [p, p, p, p, i64, i64, i64, p, p, i32]
    dll.plan_spmm.argtypes = [p, p, p, p, i64, i64, i64, p, p, p, i32]
    dll.plan_spmm_t.argtypes = [p, p, p, p, p, p, i64, i64, i64, i64, i64, p, i32]
    dll.plan_softmax.argtypes = [p, p, i64, i64, p, p, p, i32]
    dll.plan_softmax_backward.argtypes = [p, p, p, i64, i64, p, p, i32]
    dll.weighted_draws.argtypes = [p, p, u64, i64, i64, i64, i64, p, p, p, p, i32]
    dll.exponentials.argtypes = [u64, u64, i64, p]
    for name in ("plan_runs", "plan_fill", "plan_sddmm", "plan_spmm", "plan_spmm_t", "plan_softmax",
                 "plan_softmax_backward", "weighted_draws", "exponentials"):
        getattr(dll, name).restype = None


def library() -> ctypes.CDLL | None:
    """The kernels' library, built on the first call; None (with one warning per process naming the
    reason) where it cannot be built or loaded."""
    if not _loaded:
        try:
            _loaded.append((_build(), None))
        except BuildError as e:
            _loaded.append((None, str(e)))
            warnings.warn(f"boltzformer: the C kernels of the sampled attention are not available ({e}); "
                          "using PyTorch's operations instead (same results and random draws, slower). "
                          "Set BOLTZFORMER_CPU_KERNELS=0 to skip the build and this warning.",
                          RuntimeWarning, stacklevel=3)
    return _loaded[0][0]


def failure() -> str | None:
    """Why :func:`library` returned None (None where it was not tried or succeeded)."""
    return _loaded[0][1] if _loaded else None
