"""BoltzFormer: image encoder -> pixel decoder -> Boltzmann decoder -> PiGMA, text encoder beside.

``model(images, prompts)`` takes a float tensor (B, 3, H, W) with values 0-255 (H and W multiples
of 32) and B prompts, and returns :class:`BoltzFormerOutput` (mask logits at H/2 x W/2).
:func:`build_model` builds one from a preset name or a :class:`~boltzformer.config.ModelConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from boltzformer.config import ModelConfig, apply_overrides, get_preset
from boltzformer.model.backbones import TinyBackbone
from boltzformer.model.decoder import BoltzmannDecoder, LayerSampling
from boltzformer.model.pigma import PiGMA
from boltzformer.model.pixel_decoder import PixelDecoder
from boltzformer.model.text import BuiltinTextEncoder, TextEncoder, check_prompts
from boltzformer.model.sampling import BoltzmannSampler

__all__ = ["BoltzFormer", "BoltzFormerOutput", "ImageFeatures", "build_model"]


@dataclass
class ImageFeatures:
    """The prompt-independent part of a forward pass, reusable across prompts.

    ``image``: (B, 3, H, W) normalised; ``mask_features``: (B, mask_dim, H/4, W/4);
    ``multi_scale``: 3 maps at strides 32, 16, 8."""

    image: Tensor
    mask_features: Tensor
    multi_scale: list[Tensor]

    def repeat(self, times: int) -> "ImageFeatures":
        """Each image repeated ``times`` times (B -> B * times, image-major), for many prompts."""
        rep = lambda t: t.repeat_interleave(times, dim=0)  # noqa: E731
        return ImageFeatures(rep(self.image), rep(self.mask_features), [rep(m) for m in self.multi_scale])


@dataclass
class BoltzFormerOutput:
    """Outputs of :class:`BoltzFormer` (all logits: apply a sigmoid for probabilities).

    ``logits``: (B, 1, H/2, W/2) the final mask (PiGMA), or (B, 1, H/4, W/4) without PiGMA.
    ``query_logits``: (B, Q, H/4, W/4) every query's mask after the last layer.
    ``aux_logits``: query-mean logits (B, 1, H/4, W/4) of the prior and layers 0..L-2 (deep
    supervision); empty unless ``return_aux``.
    ``sampling``: per layer, the attended tokens and distributions; empty unless ``return_sampling``.
    ``existence_logits``: (B,) logits that the prompted target is in the image (sigmoid > 0.5:
    present), or None for a model without an existence head.
    ``edge_logits``: (B, 1, H/4, W/4) the mean of the edge queries (``edge_queries`` > 0, BiomedParse
    v2), or None.
    """

    logits: Tensor
    query_logits: Tensor
    aux_logits: list[Tensor] = field(default_factory=list)
    sampling: list[LayerSampling] = field(default_factory=list)
    existence_logits: Tensor | None = None
    edge_logits: Tensor | None = None


class BoltzFormer(nn.Module):
    """The full model. Build it with :func:`build_model`.

    Args:
        backbone: image (B, 3, H, W) -> {"res2".."res5"}; has ``out_channels``.
        pixel_decoder: multi-scale maps and mask features.
        text_encoder: prompts -> token features of width ``decoder.hidden_dim``.
        decoder: the Boltzmann decoder.
        pigma: PiGMA upsampler, or None for the mean of the query masks.
        pixel_mean, pixel_std: RGB normalisation of 0-255 inputs.
        config: the :class:`ModelConfig` it was built from (saved with checkpoints).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: PixelDecoder,
        text_encoder: TextEncoder,
        decoder: BoltzmannDecoder,
        pigma: PiGMA | None,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.text_encoder = text_encoder
        self.decoder = decoder
        self.pigma = pigma
        self.config = config
        self.gradient_checkpointing = False
        self.channels_last = False  # ModelConfig.channels_last
        self.edge_queries = 0  # ModelConfig.edge_queries
        # a boltzformer.train.features.FeatureCache: a frozen backbone's features are computed once per image
        self.feature_cache: Any = None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def encode_image(self, images: Tensor, *, flip_dims: Sequence[int] = ()) -> ImageFeatures:
        """Backbone and pixel decoder on images (B, 3, H, W), values 0-255.

        ``flip_dims`` (training augmentation, e.g. ``(-1,)``): flip the normalised image and the
        backbone's maps along these dims before the pixel decoder, so that a cached frozen encoder's
        features serve the flipped view too (the backbone itself sees the unflipped image)."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, 3, H, W) with values 0-255, got {shape}")
        H, W = images.shape[-2:]
        if H % 32 or W % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {H}x{W}")
        if not images.is_floating_point():
            images = images.float()
        image = (images - self.pixel_mean) / self.pixel_std
        if self.channels_last and image.device.type == "cpu":
            # the convolutions keep the input's memory format: every map from here on is channels-last
            image = image.contiguous(memory_format=torch.channels_last)
        if self.feature_cache is not None:
            norm = f"mean={self.pixel_mean.flatten().tolist()},std={self.pixel_std.flatten().tolist()}"
            feats = self.feature_cache.features(self.backbone, image, preprocessing=norm)
        elif self.gradient_checkpointing and self.training and torch.is_grad_enabled() and not hasattr(
            self.backbone, "gradient_checkpointing"
        ):
            # keep no backbone activations: recompute them in backward (backbones that checkpoint
            # block by block themselves, which saves more, do it inside)
            feats = checkpoint(self.backbone, image, use_reentrant=False)
        else:
            feats = self.backbone(image)
        if flip_dims:
            if any(d not in (-1, -2) for d in flip_dims):
                raise ValueError(f"flip_dims must hold -1 (width) and/or -2 (height), got {tuple(flip_dims)}")
            dims = list(flip_dims)
            image = image.flip(dims)
            feats = {k: v.flip(dims) for k, v in feats.items()}
        pix = self.pixel_decoder(feats)
        return ImageFeatures(image=image, mask_features=pix.mask_features, multi_scale=pix.multi_scale)

    def decode(
        self,
        features: ImageFeatures,
        prompts: Sequence[str],
        *,
        generator: torch.Generator | None = None,
        return_aux: bool = False,
        return_sampling: bool = False,
    ) -> BoltzFormerOutput:
        """Text encoder, decoder and PiGMA on encoded images, one prompt per image."""
        prompts = check_prompts(prompts)
        B = features.image.shape[0]
        if len(prompts) != B:
            raise ValueError(f"got {B} images but {len(prompts)} prompts: give one prompt per image")
        text = self.text_encoder(prompts, features.image.device)
        out = self.decoder(
            features.multi_scale,
            features.mask_features,
            text,
            generator=generator,
            return_aux=return_aux,
            return_sampling=return_sampling,
        )
        edge_logits = None
        if self.edge_queries:  # BiomedParse v2 (src/model/biomedparse_3D.py, forward_eval): the last
            # edge_queries queries are averaged into an edge map, the others into the mask (no PiGMA)
            Q = out.query_logits.shape[1]
            edge_logits = out.query_logits[:, Q - self.edge_queries :].mean(1, keepdim=True)
            logits = out.query_logits[:, : Q - self.edge_queries].mean(1, keepdim=True)
        elif self.pigma is not None:
            logits = self.pigma(out.query_logits, features.image)
        else:
            logits = out.query_logits.mean(1, keepdim=True)
        return BoltzFormerOutput(
            logits=logits,
            query_logits=out.query_logits,
            aux_logits=out.aux_logits,
            sampling=out.sampling,
            existence_logits=out.existence_logits,
            edge_logits=edge_logits,
        )

    def forward(
        self,
        images: Tensor,
        prompts: Sequence[str],
        *,
        generator: torch.Generator | None = None,
        return_aux: bool = False,
        return_sampling: bool = False,
    ) -> BoltzFormerOutput:
        """Segment the target each prompt names in its image.

        Args:
            images: float (B, 3, H, W), values 0-255, H and W multiples of 32.
            prompts: B strings.
            generator: makes the sampled attention reproducible (same seed, same mask).
            return_aux: also return earlier layers' predictions (deep supervision).
            return_sampling: also return each layer's attended tokens and distributions.
        """
        return self.decode(
            self.encode_image(images),
            prompts,
            generator=generator,
            return_aux=return_aux,
            return_sampling=return_sampling,
        )


def _build_backbone(cfg: ModelConfig) -> nn.Module:
    bc = cfg.backbone
    if bc.name == "tiny":
        return TinyBackbone(channels=bc.channels, depths=bc.depths)
    if bc.name == "tinyvit":
        from boltzformer.model.backbones.tinyvit import LITE_MEDSAM, TinyViTBackbone

        if bc.variant != "litemedsam":
            raise ValueError(f"backbone.variant for tinyvit must be 'litemedsam', got {bc.variant!r}")
        return TinyViTBackbone(config=dataclasses.replace(LITE_MEDSAM, **bc.options))
    if bc.name == "hiera":
        from boltzformer.model.backbones.hiera import HIERA_BP, HIERA_S, HieraBackbone

        variants = {"s": HIERA_S, "b+": HIERA_BP}
        if bc.variant not in variants:
            raise ValueError(f"backbone.variant for hiera must be one of {sorted(variants)}, got {bc.variant!r}")
        return HieraBackbone(dataclasses.replace(variants[bc.variant], **bc.options))
    if bc.name == "focalnet":
        from boltzformer.model.backbones.focalnet import FOCAL_L, FocalNetBackbone

        if bc.variant != "l":
            raise ValueError(f"backbone.variant for focalnet must be 'l', got {bc.variant!r}")
        return FocalNetBackbone(dataclasses.replace(FOCAL_L, **bc.options))
    raise ValueError(f"unknown backbone {bc.name!r}; available: ['tiny', 'tinyvit', 'hiera', 'focalnet']")


def build_model(preset: str | ModelConfig = "tiny", **overrides: Any) -> BoltzFormer:
    """Build a BoltzFormer from a preset name (``"tiny"``) or a :class:`ModelConfig`.

    ``overrides`` change settings by dotted path or unique field name, e.g.
    ``build_model("tiny", attention="full", num_queries=4)``.
    """
    if isinstance(preset, ModelConfig):
        cfg = apply_overrides(preset, overrides)
    else:
        cfg = get_preset(preset, **overrides)
    tc = cfg.text
    tokenizer = None  # the hash tokenizer
    if tc.tokenizer == "clip" and not tc.hf_model:  # first: a missing tokenizer fails before any weight is made
        from boltzformer.model.clip_tokenizer import ClipTokenizer

        tokenizer = ClipTokenizer(path=tc.tokenizer_path, context_length=tc.context_length)
    backbone = _build_backbone(cfg)
    pd, dc = cfg.pixel_decoder, cfg.decoder
    pixel_decoder = PixelDecoder(
        in_channels=tuple(backbone.out_channels),
        conv_dim=pd.conv_dim,
        mask_dim=pd.mask_dim,
        encoder_layers=pd.encoder_layers,
        encoder_heads=pd.encoder_heads,
        encoder_ffn_dim=pd.encoder_ffn_dim,
        norm_groups=pd.norm_groups,
    )
    if tc.hf_model:
        from boltzformer.model.hf_text import HFTextEncoder

        text_encoder: TextEncoder = HFTextEncoder(name_or_path=tc.hf_model, out_dim=dc.hidden_dim, max_length=tc.hf_max_length)
    else:
        text_encoder = BuiltinTextEncoder(
            out_dim=dc.hidden_dim,
            vocab_size=tc.vocab_size,
            context_length=tc.context_length,
            width=tc.width,
            layers=tc.layers,
            heads=tc.heads,
            activation=tc.activation,
            ln_eps=tc.ln_eps,
            tokenizer=tokenizer,
        )
    sampler = BoltzmannSampler(
        mode=dc.attention, ratio=dc.sample_ratio, base_temperature=dc.base_temperature, threshold=dc.threshold
    )
    decoder = BoltzmannDecoder(
        in_channels=pixel_decoder.conv_dim,
        mask_dim=pixel_decoder.mask_dim,
        hidden_dim=dc.hidden_dim,
        num_heads=dc.num_heads,
        ffn_dim=dc.ffn_dim,
        num_layers=dc.num_layers,
        num_queries=dc.num_queries,
        pre_self_attention=dc.pre_self_attention,
        sampler=sampler,
        attention_impl=dc.attention_impl,
        existence=dc.existence,
    )
    pigma = PiGMA(num_queries=dc.num_queries, hidden_channels=cfg.pigma_channels) if cfg.pigma else None
    decoder.gradient_checkpointing = cfg.gradient_checkpointing
    model = BoltzFormer(
        backbone=backbone,
        pixel_decoder=pixel_decoder,
        text_encoder=text_encoder,
        decoder=decoder,
        pigma=pigma,
        pixel_mean=cfg.pixel_mean,
        pixel_std=cfg.pixel_std,
        config=cfg,
    )
    model.gradient_checkpointing = cfg.gradient_checkpointing
    model.channels_last = cfg.channels_last
    model.edge_queries = cfg.edge_queries
    if hasattr(backbone, "gradient_checkpointing"):
        backbone.gradient_checkpointing = cfg.gradient_checkpointing
    return model
