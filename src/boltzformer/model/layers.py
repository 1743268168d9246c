"""Transformer building blocks shared by the pixel decoder and the Boltzmann decoder.

Post-norm layers in the form of Mask2Former / the reference code (``x = norm(x + f(x))``), with
the reference code's parameter names so that its checkpoints map onto them directly.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boltzformer.model.attention import MultiHeadAttention

__all__ = ["ConvNorm", "FFNLayer", "LayerNorm2d", "MLP", "SelfAttentionLayer", "CrossAttentionLayer"]


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class SelfAttentionLayer(nn.Module):
    """``x = norm(x + SelfAttn(q=k=x+pos, v=x))``, padding keys never attended."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, x: Tensor, *, pos: Tensor | None = None, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        qk = _with_pos(x, pos)
        return self.norm(x + self.self_attn(qk, qk, x, key_padding_mask=key_padding_mask))


class CrossAttentionLayer(nn.Module):
    """``q = norm(q + CrossAttn(q + query_pos, memory + pos, memory))`` over a chosen key set."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.multihead_attn = MultiHeadAttention(d_model, num_heads)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        pos: Tensor | None,
        query_pos: Tensor | None,
        keep: Tensor | None = None,
        indices: Tensor | None = None,
        valid: Tensor | None = None,
        memory_pos: Tensor | None = None,
        value_shift: Tensor | None = None,
        keys_from_values: bool = False,
    ) -> Tensor:
        """``memory_pos``: the keys' input ``memory + pos`` computed by the caller (a decoder reuses it
        over layers). ``value_shift``: (C,) the values are ``memory + value_shift`` (a level embedding
        that the sampled form adds without a copy of ``memory``). ``keys_from_values``: the sampled
        form may give the keys' gradient to ``memory`` (the position needs none; see
        :meth:`MultiHeadAttention.forward_sampled`)."""
        q = _with_pos(x, query_pos)
        k = memory_pos if memory_pos is not None else _with_pos(memory, pos)
        if indices is not None:
            out = self.multihead_attn.forward_sampled(
                q, k, memory, indices=indices, valid=valid, value_shift=value_shift, keys_from_values=keys_from_values
            )
        else:
            value = memory if value_shift is None else memory + value_shift
            out = self.multihead_attn(q, k, value, keep=keep)
        return self.norm(x + out)


class FFNLayer(nn.Module):
    """``x = norm(x + linear2(relu(linear1(x))))``."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        for lin in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(lin.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """A stack of ``num_layers`` linear layers with ReLU between them (``layers.0`` ...)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class ConvNorm(nn.Conv2d):
    """Conv2d followed by an optional norm (stored as ``.norm``) and activation.

    The layout of detectron2's ``Conv2d(..., norm=...)`` that the reference pixel decoder uses:
    keys ``<name>.weight`` and ``<name>.norm.weight``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.norm = norm
        self.activation = activation
        # c2_xavier_fill: kaiming-uniform with a=1, zero bias
        nn.init.kaiming_uniform_(self.weight, a=1)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def check_image_batch(x: Tensor, size_divisor: int) -> None:
    """Raise a ValueError unless ``x`` is (B, 3, H, W) with H and W multiples of ``size_divisor``."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (B, 3, H, W), got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H % size_divisor or W % size_divisor:
        raise ValueError(f"x: H and W must be multiples of {size_divisor}, got {H} x {W}")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, SAM's ``LayerNorm2d`` (eps 1e-6): LiteMedSAM's
    TinyViT neck and SAM's box decoder use it, with parameters ``weight`` and ``bias``."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # BxCxHxW -> BxHxWxC -> normalise over C -> BxCxHxW
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)
