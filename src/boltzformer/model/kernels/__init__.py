"""Kernels below the model: the counter-based random stream that every draw path shares
(:mod:`.counter_rng`), the C kernels of the sampled attention and the draws on CPU (:mod:`.cpu`, built from
``csrc/`` on first use by :mod:`.cpu_build`) and the Triton kernels of the sampled attention for CUDA
(:mod:`.triton_attention`, imported only where ``triton`` is installed and used). They depend on
torch (and triton) only, so the sampler and the attention can both use them."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

__all__ = ["triton_usable"]


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_usable(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels of :mod:`.triton_attention` apply to these tensors: ``triton`` is
    installed and the tensors are on a CUDA device, unless ``BOLTZFORMER_TRITON=0`` (PyTorch's
    operations instead). ``BOLTZFORMER_TRITON=interpret`` also sends CPU tensors to them, through
    Triton's interpreter, which needs ``TRITON_INTERPRET=1`` before ``triton`` is first imported
    (how the tests run the kernels without a GPU; slow, for tests only)."""
    mode = os.environ.get("BOLTZFORMER_TRITON", "1")
    if mode == "0" or not _has_triton():
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return mode == "interpret" and all(t.device.type == "cpu" for t in tensors)
