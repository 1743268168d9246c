"""boltzformer.runtime: glibc keeps freed memory for reuse."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CHILD = r"""
import ctypes, os, sys
from boltzformer.runtime import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
on = keep_freed_memory()
import torch
x = torch.empty(64 * 2**20, dtype=torch.uint8)  # 64 MB, above glibc's largest mmap threshold
x.fill_(1)
info = libc.mallinfo2()
print(on, info.hblkhd >= 64 * 2**20, keep_freed_memory())
"""


def _run(env_value: str | None) -> str:
    import os

    env = dict(os.environ)
    env.pop("BOLTZFORMER_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["BOLTZFORMER_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_large_blocks_come_from_the_heap_once_set():
    # on: a 64 MB tensor is not an mmap'ed block (hblkhd counts those); a second call says the same
    assert _run(None) == ["True", "False", "True"]
    # turned off: glibc's default, the block is mmap'ed
    assert _run("0") == ["False", "True", "False"]
