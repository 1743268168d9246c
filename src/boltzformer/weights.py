"""Load pretrained weights from foreign checkpoints: SAM2, LiteMedSAM, X-Decoder, the official BoltzFormer, ours.

Each kind of file passes through a pure key-mapping function (tested on its own); the load is
strict about shapes and reports, key by key, what it used and what it did not:

- ``loaded``: the file's keys that were used;
- ``unused``: the file's keys that were not (e.g. SAM2's memory modules, LiteMedSAM's box-prompted
  mask decoder, CLIP's logit scale);
- ``missing``: the model's keys the file did not set, each with the reason.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from boltzformer.checkpoint import CheckpointError

__all__ = ["LoadReport", "load_pretrained", "read_state_dict", "detect_kind", "map_official_key", "map_xdecoder_key", "map_sam2_key",
           "map_litemedsam_key"]

log = logging.getLogger(__name__)

_UNUSED_OFFICIAL = {
    "sem_seg_head.predictor.class_embed": "the reference code's class projection; no output of the segmentation model uses it",
    "sem_seg_head.predictor.language_encoder.logit_scale": "CLIP's similarity scale; not used for segmentation",
}


def map_official_key(key: str) -> str | None:
    """Official BoltzFormer state-dict key -> ours (None: a key we do not use)."""
    if key in _UNUSED_OFFICIAL:
        return None
    for old, new in (
        ("backbone.", "backbone."),
        ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
        ("sem_seg_head.predictor.language_encoder.", "text_encoder."),
        # BiomedParse v2's existence head (classifier_query, classifier_*_layers, classifier)
        ("sem_seg_head.predictor.classifier", "decoder.existence.classifier"),
        ("sem_seg_head.predictor.", "decoder."),
        ("output_deconv.", "pigma.deconv."),
        ("output_conv.", "pigma.conv."),
    ):
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def map_xdecoder_key(key: str) -> str | None:
    """X-Decoder (SEEM) checkpoint key -> ours: backbone, pixel decoder and the decoder parts the
    two share. X-Decoder's language encoder has another layout and is not used."""
    if key.startswith("model."):
        key = key[len("model.") :]
    if key.startswith("sem_seg_head.predictor.lang_encoder.") or key.startswith("criterion."):
        return None
    if key.startswith(("sem_seg_head.predictor.caping_embed", "sem_seg_head.predictor.pos_embed_caping",
                       "sem_seg_head.predictor.self_attn_mask", "backbone_proj")):
        return None
    return map_official_key(key)


def map_sam2_key(key: str) -> str | None:
    """SAM2 checkpoint key (under ``"model"``) -> ours: ``image_encoder.*`` is the backbone."""
    if key.startswith("image_encoder."):
        return "backbone." + key[len("image_encoder.") :]
    return None


def map_litemedsam_key(key: str) -> str | None:
    """LiteMedSAM (``lite_medsam.pth``) key -> ours: ``image_encoder.*`` is the ``lite`` preset's
    TinyViT backbone, key for key; its prompt encoder and box-prompted mask decoder are not used."""
    if key.startswith("image_encoder."):
        return "backbone." + key[len("image_encoder.") :]
    return None


_MAPPERS = {"boltzformer": None, "official": map_official_key, "xdecoder": map_xdecoder_key, "sam2": map_sam2_key,
            "litemedsam": map_litemedsam_key}
#: why a foreign file's keys of a known part are not used
_UNUSED_PARTS = {
    "litemedsam": {"mask_decoder.": "LiteMedSAM's box-prompted mask decoder (SAM's); BoltzFormer's decoder takes text",
                   "prompt_encoder.": "LiteMedSAM's box / point prompt encoder; BoltzFormer is prompted by text"},
}


@dataclass
class LoadReport:
    kind: str
    loaded: list[str] = field(default_factory=list)
    unused: dict[str, str] = field(default_factory=dict)  # file key -> why not used
    missing: dict[str, str] = field(default_factory=dict)  # model key -> why not set

    def summary(self) -> str:
        return (f"{self.kind} checkpoint: {len(self.loaded)} tensors loaded, {len(self.unused)} in the file unused, "
                f"{len(self.missing)} of the model's not set")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """The tensors of a checkpoint file and its top-level container (for detection)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"weights file {path} is not a readable safetensors file ({exc})") from None
        return state, {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"weights file {path} could not be read as a torch file ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"weights file {path} holds a {type(data).__name__}, expected a dict of tensors")
    for container in ("state_dict", "model"):
        if isinstance(data.get(container), dict):
            return {k: v for k, v in data[container].items() if isinstance(v, Tensor)}, data
    return {k: v for k, v in data.items() if isinstance(v, Tensor)}, data


def detect_kind(state: Mapping[str, Tensor], container: Mapping) -> str:
    """``"boltzformer"`` (ours), ``"official"``, ``"xdecoder"``, ``"sam2"`` or ``"litemedsam"``; else CheckpointError."""
    keys = list(state)
    if "boltzformer" in container:
        return "boltzformer"
    if any(k.startswith("image_encoder.patch_embed.seq.") for k in keys):  # TinyViT's patch embedding
        return "litemedsam"
    if any(k.startswith("image_encoder.") for k in keys):
        return "sam2"
    stripped = [k[len("model."):] if k.startswith("model.") else k for k in keys]
    if any(k.startswith("sem_seg_head.predictor.lang_encoder.") for k in stripped):
        return "xdecoder"
    if any(k.startswith(("sem_seg_head.", "output_deconv.")) for k in stripped):
        return "official"
    if any(k.startswith(("decoder.", "pixel_decoder.", "text_encoder.")) for k in keys):
        return "boltzformer"
    raise CheckpointError(
        f"not a checkpoint this package can read: {len(keys)} tensors, first keys {keys[:4]}; expected SAM2 or "
        "LiteMedSAM (image_encoder.*), X-Decoder or official BoltzFormer (backbone.*, sem_seg_head.*), or boltzformer's own"
    )


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load the weights in ``path`` into ``model`` where they fit; returns (and logs) a report.

    Raises:
        CheckpointError: unreadable file, a file of no known kind, or a tensor whose shape differs
            from the model's (X-Decoder decoder parts of another size are reported as unused instead).
    """
    state, container = read_state_dict(path)
    kind = detect_kind(state, container)
    own = model.state_dict()
    report = LoadReport(kind=kind)
    new_state: dict[str, Tensor] = {}
    for key, value in state.items():
        target = key[len("model."):] if kind == "boltzformer" and key.startswith("model.") else key
        mapper = _MAPPERS[kind]
        if mapper is not None:
            # Lightning checkpoints of the official code (BiomedParse v2) prefix every key with "model."
            target = mapper(key[len("model."):] if kind == "official" and key.startswith("model.") else key)
        if target is None:
            part = next((why for prefix, why in _UNUSED_PARTS.get(kind, {}).items() if key.startswith(prefix)), None)
            report.unused[key] = part or _UNUSED_OFFICIAL.get(key.removeprefix("model."), f"no counterpart in this model ({kind} layout)")
            continue
        if target not in own and kind == "litemedsam":
            # the file is one encoder: every one of its keys must land, or the preset is the wrong one
            raise CheckpointError(f"{path}: LiteMedSAM's {key} has no counterpart {target} in this model; load it into the 'lite' preset")
        if target not in own:
            report.unused[key] = f"this model has no {target}"
            continue
        if tuple(own[target].shape) != tuple(value.shape):
            if kind == "xdecoder" and target.startswith("decoder."):
                report.unused[key] = f"shape {tuple(value.shape)} != the model's {tuple(own[target].shape)}"
                continue
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)} but the model's {target} has {tuple(own[target].shape)}; "
                f"the file does not fit this preset"
            )
        new_state[target] = value
        report.loaded.append(key)
    why = {"sam2": "SAM2 checkpoints hold the image encoder only", "xdecoder": "not in X-Decoder's model",
           "litemedsam": "LiteMedSAM's file holds the image encoder only (trained here)"}
    for key in own:
        if key not in new_state:
            report.missing[key] = why.get(kind, "not in the file")
    unset = [k for k in report.missing if k.startswith("backbone.")]
    if kind == "litemedsam" and unset:
        raise CheckpointError(f"{path}: LiteMedSAM's file does not set {len(unset)} of the encoder's tensors ({unset[:3]}); "
                              "it is not the lite_medsam.pth this preset was written for")
    model.load_state_dict(new_state, strict=False)
    log.info(report.summary())
    return report
