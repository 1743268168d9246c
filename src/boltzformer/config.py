"""Typed configurations and named presets.

A :class:`ModelConfig` fully describes a model; :func:`get_preset` returns a named one with
overrides applied. Overrides name a field either by its dotted path (``"decoder.num_layers"``) or,
when the name is unique across the sub-configs, by the field alone (``num_layers=3``,
``attention="full"``).

Presets:
- ``tiny``: a small model for the built-in synthetic benchmark and laptop CPUs (256 x 256 input).
- ``lite``: LiteMedSAM's pretrained medical TinyViT encoder (256 x 256 input, 5.7 M parameters, loads
  ``lite_medsam.pth`` strictly) with ``tiny``'s decoder sizes: small enough to train on a CPU with the
  encoder frozen and its features cached (``train --freeze backbone --feature-cache DIR``).
- ``hiera-s``, ``hiera-bp``, ``focal-l``: the reference code's configurations (1024 x 1024 input) with
  SAM2 Hiera-S / Hiera-B+ and X-Decoder FocalNet-L image encoders.
- ``biomedparse-v2``: BiomedParse v2's 3D model (focal-l with an existence head, 16 queries of which
  the last 4 are edge queries, no PiGMA, grey normalisation, 512 x 512 input, 2.5D volumes, NMS across
  prompts), the configuration its released ``biomedparse_v2.ckpt`` loads into.

``tiny`` uses the hash tokenizer; every other preset CLIP's BPE tokenizer (``text.tokenizer``), which
their text weights were trained with.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


__all__ = [
    "BackboneConfig",
    "PixelDecoderConfig",
    "TextConfig",
    "DecoderConfig",
    "ModelConfig",
    "TrainConfig",
    "FREEZABLE_PARTS",
    "PRESETS",
    "get_preset",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
]

#: How a decoder layer chooses the image tokens a query attends to.
#: ``boltzmann``: the paper's sampling; ``full``: every token (dense attention);
#: ``masked``: Mask2Former, tokens with sigmoid >= 0.5 (every token where none is);
#: ``uniform``: as many i.i.d. draws as ``boltzmann`` but from the uniform distribution.
#: (the sampler, ``boltzformer.model.sampling.BoltzmannSampler``, implements them)
ATTENTION_MODES = ("boltzmann", "full", "masked", "uniform")

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class BackboneConfig:
    name: str = "tiny"  # image encoder: "tiny", "tinyvit" (LiteMedSAM), "hiera" (SAM2) or "focalnet" (X-Decoder)
    variant: str = ""  # tinyvit: "litemedsam"; hiera: "s" or "b+"; focalnet: "l"
    channels: tuple[int, ...] = (32, 64, 128, 192)  # tiny only: res2..res5 channels
    depths: tuple[int, ...] = (1, 1, 2, 1)  # tiny only: blocks per stage
    options: dict[str, Any] = field(default_factory=dict)  # tinyvit / hiera / focalnet: fields of their own configs


@dataclass
class PixelDecoderConfig:
    conv_dim: int = 64  # FPN / multi-scale channels
    mask_dim: int = 64  # mask feature channels
    encoder_layers: int = 1  # transformer encoder layers on the stride-32 map
    encoder_heads: int = 4
    encoder_ffn_dim: int = 256
    norm_groups: int = 32  # GroupNorm groups


TOKENIZERS = ("hash", "clip")


@dataclass
class TextConfig:
    tokenizer: str = "hash"  # "hash" (no vocabulary file) or "clip" (CLIP BPE, as the official text weights)
    tokenizer_path: str | None = None  # clip: a tokenizer folder or hub id (None: $BOLTZFORMER_CLIP_TOKENIZER, else openai/clip-vit-base-patch32)
    vocab_size: int = 8192  # embedding rows: hash-tokenizer buckets, or 49408 for CLIP
    context_length: int = 32  # max tokens, start and end tokens included
    width: int = 64
    layers: int = 2
    heads: int = 4
    activation: str = "gelu"  # "gelu", or "quick_gelu" as in the reference code's text transformer
    ln_eps: float = 1e-5  # the reference code's text transformer uses 1e-12
    hf_model: str | None = None  # a HuggingFace tokenizer + encoder (hub id or local dir) instead of the built-in one
    hf_max_length: int = 77


@dataclass
class DecoderConfig:
    hidden_dim: int = 64
    num_heads: int = 4
    ffn_dim: int = 256
    num_layers: int = 6  # decoder layers L, cycling over strides 32, 16, 8
    num_queries: int = 10  # latent queries m (the paper: 10 is enough)
    pre_self_attention: bool = True  # text-conditioned prior
    attention: str = "boltzmann"  # boltzmann | full | masked | uniform
    sample_ratio: float = 0.1  # draws per query and head, as a fraction of the level's tokens
    base_temperature: float = 1.0  # tau0; layer l uses tau0 / (1 + l)
    threshold: float | None = None  # always-attend tokens with sigmoid >= threshold (None: none)
    attention_impl: str = "gather"  # sampled sets: "gather" only the drawn tokens (docs/benchmarks.md), or "dense" attention with a mask
    existence: bool = False  # existence head (BiomedParse v2): is the prompted target in the image?


@dataclass
class ModelConfig:
    preset: str = "tiny"
    image_size: int = 256  # training / inference input side; any multiple of 32 runs
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pigma: bool = True  # PiGMA upsampler (else: mean of the query masks at stride 4)
    pigma_channels: int = 10
    gradient_checkpointing: bool = False  # recompute the backbone and each decoder layer in backward (less memory)
    # on CPU, run the image encoder in channels-last memory (oneDNN's faster convolutions, and the
    # decoder's token-major maps without a transpose); same results up to float rounding
    channels_last: bool = False
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    # the last edge_queries queries predict an edge map (BiomedParse v2: 4), not the mask: the mask is
    # the mean of the others (without PiGMA), the edge map the mean of these
    edge_queries: int = 0
    volume_context: str = "2d"  # volumes: "2d" slices, or "2.5d" (slice, previous, next as RGB; BiomedParse v2)
    # several prompts on one volume: "independent" masks, or "nms" (BiomedParse v2): per slice, NMS
    # across prompts (IoU 0.5, by existence), then each voxel to the most probable prompt above 0.5
    prompt_overlap: str = "independent"
    pad: str = "corner"  # inference: pad to a square at the bottom and right ("corner") or both sides ("center", BiomedParse v2)

    def validate(self) -> "ModelConfig":
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.decoder.attention not in ATTENTION_MODES:
            raise ValueError(
                f"decoder.attention must be one of {ATTENTION_MODES}, got {self.decoder.attention!r}"
                + _did_you_mean(self.decoder.attention, ATTENTION_MODES)
            )
        if self.decoder.attention_impl not in ("gather", "dense"):
            raise ValueError(f"decoder.attention_impl must be 'gather' or 'dense', got {self.decoder.attention_impl!r}")
        if not 0 < self.decoder.sample_ratio <= 1:
            raise ValueError(f"decoder.sample_ratio must be in (0, 1], got {self.decoder.sample_ratio}")
        if self.decoder.base_temperature <= 0:
            raise ValueError(f"decoder.base_temperature must be > 0, got {self.decoder.base_temperature}")
        if self.decoder.hidden_dim % self.decoder.num_heads:
            raise ValueError(
                f"decoder.hidden_dim ({self.decoder.hidden_dim}) must be divisible by decoder.num_heads "
                f"({self.decoder.num_heads})"
            )
        for name in ("num_layers", "num_queries"):
            if getattr(self.decoder, name) < 1:
                raise ValueError(f"decoder.{name} must be >= 1, got {getattr(self.decoder, name)}")
        if self.text.tokenizer not in TOKENIZERS:
            raise ValueError(f"text.tokenizer must be one of {TOKENIZERS}, got {self.text.tokenizer!r}"
                             + _did_you_mean(self.text.tokenizer, TOKENIZERS))
        if self.text.tokenizer == "clip" and not self.text.hf_model and self.text.vocab_size < 49408:
            raise ValueError(f"text.vocab_size must be >= 49408 with the CLIP tokenizer, got {self.text.vocab_size}")
        if not 0 <= self.edge_queries < self.decoder.num_queries:
            raise ValueError(f"edge_queries must be in [0, decoder.num_queries), got {self.edge_queries}")
        if self.edge_queries and self.pigma:
            raise ValueError("edge_queries needs pigma=False (BiomedParse v2 averages the other queries at stride 4)")
        for name, options in (("volume_context", ("2d", "2.5d")), ("prompt_overlap", ("independent", "nms")),
                              ("pad", ("corner", "center"))):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        return self


#: ``TrainConfig.loss``: the segmentation loss (``boltzformer.train.module.SegmentationLoss``)
LOSSES = ("dice_ce", "dice_focal", "tversky_ce")

#: the model parts that ``TrainConfig.freeze`` (``train --freeze``) can leave untrained
FREEZABLE_PARTS = ("backbone", "pixel_decoder", "text_encoder")


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3  # AdamW, cosine decay after a linear warm-up
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    deep_supervision: bool = True  # loss on every layer's query-mean prediction too
    aux_weight: float = 0.5  # weight of each earlier prediction's loss
    precision: str = "32"  # "32" or "bf16"
    devices: int = 1
    accelerator: str = "auto"
    num_workers: int = 0
    val_every: int = 250  # validation every this many steps
    val_batches: int | None = None  # validation batches per check (None: the whole split)
    seed: int = 0
    negative_ratio: float = 0.0  # negative prompts (absent targets, empty masks) per training sample
    existence_weight: float = 1.0  # weight of the existence head's BCE loss
    # parts not trained (no gradients, no optimiser state, kept in eval mode): any of FREEZABLE_PARTS
    freeze: tuple[str, ...] = ()
    # native-resolution training (data/patches.py): patches of the model's input size cut from the images
    # at their own resolution, on the grid of a sliding window of that size with this overlap in [0, 1)
    # (None: whole images padded and resized to the input size)
    patch_overlap: float | None = None
    target_fraction: float = 0.8  # patches: share drawn around the target
    size_weighting: bool = True  # patches: tiny-target images drawn 4x, small 2x, large 1x (SIZE_WEIGHTS)
    # random flips of the backbone's maps, the image and the mask in the model (so that a frozen encoder's
    # cached features serve every flipped view); the data's own flips are then off
    feature_flips: bool = False
    # the recipe's options measured by configs/ablations/recipe.yaml (docs/ablations.md); defaults: the best
    loss: str = "dice_ce"  # one of LOSSES (MONAI): Dice + BCE (the paper), Dice + focal, Tversky + BCE
    # whole images: "auto" (synthetic: none, folder data: "in"), or one of data.loading.SCALE_JITTER
    scale_jitter: str = "auto"
    copy_paste: float = 0.0  # whole images: probability of pasting a copy of the target elsewhere in the image
    image_weighting: bool = False  # whole images: drawn by their target's size, as size_weighting does for patches

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}" + _did_you_mean(self.loss, LOSSES))
        if self.scale_jitter not in ("auto", "none", "in", "both"):
            raise ValueError(f"scale_jitter must be one of ('auto', 'none', 'in', 'both'), got {self.scale_jitter!r}")
        if not 0.0 <= self.copy_paste <= 1.0:
            raise ValueError(f"copy_paste must be a probability in [0, 1], got {self.copy_paste}")
        bad = [p for p in self.freeze if p not in FREEZABLE_PARTS]
        if bad:
            raise ValueError(f"freeze: unknown part(s) {bad}; expected some of {list(FREEZABLE_PARTS)}")
        if self.patch_overlap is not None and not 0.0 <= self.patch_overlap < 1.0:
            raise ValueError(f"patch_overlap must be in [0, 1) (or None), got {self.patch_overlap}")
        if not 0.0 <= self.target_fraction <= 1.0:
            raise ValueError(f"target_fraction must be in [0, 1], got {self.target_fraction}")


def _tiny() -> ModelConfig:
    return ModelConfig(preset="tiny")


def _paper_size(preset: str, backbone: BackboneConfig) -> ModelConfig:
    """The reference configurations: 1024 input, hidden 512, 9 layers, 101 queries, pixel decoder
    with 6 encoder layers and 512 channels, sampling ratio 0.1, tau0 1, the reference text transformer."""
    return ModelConfig(
        preset=preset,
        image_size=1024,
        backbone=backbone,
        pixel_decoder=PixelDecoderConfig(conv_dim=512, mask_dim=512, encoder_layers=6, encoder_heads=8, encoder_ffn_dim=2048),
        text=TextConfig(tokenizer="clip", vocab_size=49408, context_length=77, width=512, layers=12, heads=8,
                        activation="quick_gelu", ln_eps=1e-12),
        decoder=DecoderConfig(hidden_dim=512, num_heads=8, ffn_dim=2048, num_layers=9, num_queries=101),
        channels_last=True,  # 1.15-1.2x faster eval at 1024 on CPU (docs/benchmarks.md)
    )


def _biomedparse_v2() -> ModelConfig:
    """BiomedParse v2's 3D model (microsoft/BiomedParse ``configs/model/biomedparse_3D.yaml`` at f571d5cc,
    ``src/model/biomedparse_3D.py``): focal-l with the existence head, 16 queries with the last 4 as edge
    queries, ``convolute_outputs: False`` (no PiGMA: masks at stride 4), ``gray_scale`` normalisation (the
    ImageNet means and stds averaged: 114.495 / 57.63), 512 x 512 input zero-padded equally on both sides.
    Volumes: 2.5D slices, NMS across prompts. The decoder sizes are the reconstructed ones of ``official-layouts/biomedparse_v2_3d.json``."""
    cfg = _paper_size("biomedparse-v2", BackboneConfig(name="focalnet", variant="l"))
    cfg.image_size = 512
    cfg.decoder.num_queries = 16
    cfg.decoder.existence = True
    cfg.pigma = False
    cfg.edge_queries = 4
    grey_mean, grey_std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    cfg.pixel_mean, cfg.pixel_std = (grey_mean,) * 3, (grey_std,) * 3
    cfg.volume_context = "2.5d"
    cfg.prompt_overlap = "nms"
    cfg.pad = "center"  # its utils.py pad_and_resize: "pad to square with equal padding on both sides"
    return cfg


def _lite() -> ModelConfig:
    """LiteMedSAM's encoder (inputs scaled to [0, 1] as it was trained) with tiny's decoder sizes."""
    return ModelConfig(
        preset="lite",
        backbone=BackboneConfig(name="tinyvit", variant="litemedsam"),
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(255.0, 255.0, 255.0),
    )


PRESETS = {
    "tiny": _tiny,
    "lite": _lite,
    "hiera-s": lambda: _paper_size("hiera-s", BackboneConfig(name="hiera", variant="s")),
    "hiera-bp": lambda: _paper_size("hiera-bp", BackboneConfig(name="hiera", variant="b+")),
    "focal-l": lambda: _paper_size("focal-l", BackboneConfig(name="focalnet", variant="l")),
    "biomedparse-v2": _biomedparse_v2,
}


def _did_you_mean(value: str, options) -> str:
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _leaf_paths(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Every leaf field as {dotted path: path}."""
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        path = prefix + f.name
        if is_dataclass(value):
            out.update(_leaf_paths(value, path + "."))
        else:
            out[path] = path
    return out


def apply_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """A copy of ``cfg`` with ``overrides`` applied (dotted paths or unique field names).

    Why not OmegaConf or jsonargparse (``OmegaConf.merge(structured, OmegaConf.from_dotlist(...))``): they
    would replace only the dotted-path walk (about ten lines) and bring a dependency, while the parts that
    make up this function stay ours: a bare field name resolved when unique (``num_layers=9``), the error that
    lists the candidates of an ambiguous name, the "did you mean", and ``ModelConfig.validate()``.

    Raises:
        ValueError: an unknown or ambiguous key (named, with the candidates), or a value that
            :meth:`ModelConfig.validate` refuses.
    """
    cfg = config_from_dict(type(cfg), config_to_dict(cfg))  # a deep copy
    paths = _leaf_paths(cfg)
    by_name: dict[str, list[str]] = {}
    for p in paths:
        by_name.setdefault(p.rsplit(".", 1)[-1], []).append(p)
    for key, value in overrides.items():
        if key in paths:
            path = key
        elif key in by_name and len(by_name[key]) == 1:
            path = by_name[key][0]
        elif key in by_name:
            raise ValueError(f"override {key!r} is ambiguous: use one of {sorted(by_name[key])}")
        else:
            raise ValueError(
                f"unknown model setting {key!r}" + _did_you_mean(key, list(paths) + list(by_name))
            )
        *parents, leaf = path.split(".")
        target = cfg
        for p in parents:
            target = getattr(target, p)
        current = getattr(target, leaf)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        setattr(target, leaf, value)
    return cfg.validate()


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset's :class:`ModelConfig` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}" + _did_you_mean(name, PRESETS))
    return apply_overrides(PRESETS[name](), overrides)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


#: settings that were removed, with the one value that files written before may record for each:
#: dropped when read (so older checkpoints and result files still load), refused with the reason for
#: any other value. ``DecoderConfig.decoder_impl``: the reference code's decoder formulation
#: ("reference") is a benchmark and test baseline, no longer built by the package.
_RETIRED: dict[tuple[str, str], tuple[Any, str]] = {
    ("DecoderConfig", "decoder_impl"): (
        "efficient",
        "the reference decoder formulation is no longer part of the package; benchmarks/reference_decoder.py "
        "builds it (use_reference_decoder(model))",
    ),
}


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from :func:`config_to_dict`'s output; unknown keys raise (removed
    settings that hold their only former value are dropped: see ``_RETIRED``)."""
    data = dict(data)
    for (owner, name), (value, reason) in _RETIRED.items():
        if owner == cls.__name__ and name in data:
            if data[name] != value:
                raise ValueError(f"{cls.__name__}.{name}={data[name]!r} is no longer supported: {reason}")
            del data[name]
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        if is_dataclass(default):
            value = config_from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
