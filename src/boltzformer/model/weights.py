"""Load pretrained weights from foreign checkpoints: SAM2, LiteMedSAM, X-Decoder, the official BoltzFormer, ours.

Each kind of file passes through a pure key-mapping function (tested on its own); the load is
strict about shapes and reports, key by key, what it used and what it did not:

- ``loaded``: the file's keys that were used;
- ``unused``: the file's keys that were not (e.g. SAM2's memory modules, LiteMedSAM's box-prompted
  mask decoder, CLIP's logit scale);
- ``missing``: the model's keys the file did not set, each with the reason.

Files are read lazily, so that a checkpoint several GB large (BiomedParse v2's ``biomedparse_v2.ckpt``
holds its AdamW moments too) never sits in memory whole: ``torch.load(..., mmap=True,
weights_only=True)`` maps the file and only the tensors the model uses are read, one at a time, into
the model's own parameters; ``.safetensors`` files are opened with ``safe_open`` and read tensor by
tensor. Text weights trained on CLIP token ids (official BoltzFormer, BiomedParse v2) load only into a
model whose ``text.tokenizer`` is ``"clip"``; a checkpoint of ours only into a model with its tokenizer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from boltzformer.model.checkpoint import CheckpointError, torch_load as _torch_load

__all__ = ["LoadReport", "load_pretrained", "read_state_dict", "detect_kind", "map_official_key", "map_xdecoder_key", "map_sam2_key",
           "map_litemedsam_key", "model_tokenizer"]

log = logging.getLogger(__name__)

_UNUSED_OFFICIAL = {
    "sem_seg_head.predictor.class_embed": "the reference code's class projection; no output of the segmentation model uses it",
    "sem_seg_head.predictor.language_encoder.logit_scale": "CLIP's similarity scale; not used for segmentation",
    # BiomedParse v2's Lightning checkpoint (its load_pretrained drops exactly these two)
    "loss_function.loss_fn.dice_loss.class_weight": "a training-loss buffer, not a model weight",
    "loss_function.cls_loss_fn.pos_weight": "a training-loss buffer, not a model weight",
}
# BiomedParse v2 renamed the queries (src/model/biomedparse_3D.py's decoder; 16 queries)
_RENAMED_OFFICIAL = {
    "sem_seg_head.predictor.query_feat_.weight": "sem_seg_head.predictor.query_feat.weight",
    "sem_seg_head.predictor.query_embed_.weight": "sem_seg_head.predictor.query_embed.weight",
}
#: the model's normalisation buffers, which BiomedParse v2 saves (ours are set from the config)
NORMALISATION_KEYS = ("pixel_mean", "pixel_std")
# top-level entries of a training checkpoint that are not model weights
_NOT_WEIGHTS = {
    "optimizer_states": "optimizer state (AdamW moments), not model weights",
    "lr_schedulers": "learning-rate scheduler state",
    "callbacks": "training callbacks' state",
    "loops": "training loop state",
}


def map_official_key(key: str) -> str | None:
    """Official BoltzFormer / BiomedParse v2 state-dict key -> ours (None: a key we do not use)."""
    if key in _UNUSED_OFFICIAL:
        return None
    if key in NORMALISATION_KEYS:
        return key
    key = _RENAMED_OFFICIAL.get(key, key)
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
    tokenizer: str = ""  # the model's text tokenizer ("hash" or "clip")
    loaded: list[str] = field(default_factory=list)
    unused: dict[str, str] = field(default_factory=dict)  # file key -> why not used
    missing: dict[str, str] = field(default_factory=dict)  # model key -> why not set
    ignored: dict[str, str] = field(default_factory=dict)  # top-level entries that are not weights -> what they are

    def summary(self) -> str:
        extra = f"; not weights, skipped: {', '.join(sorted(self.ignored))}" if self.ignored else ""
        return (f"{self.kind} checkpoint: {len(self.loaded)} tensors loaded, {len(self.unused)} in the file unused, "
                f"{len(self.missing)} of the model's not set; text tokenizer: {self.tokenizer}{extra}")


class _SafetensorsState(Mapping):
    """The tensors of a ``.safetensors`` file, read one at a time on access (``safe_open``)."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt", device="cpu")
        self._keys = list(self._file.keys())

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def read_state_dict(path: str | os.PathLike) -> tuple[Mapping[str, Tensor], dict]:
    """The tensors of a checkpoint file (a mapping that reads them lazily) and its top-level container
    (for detection and the report)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return _SafetensorsState(path), {}
        except Exception as exc:
            raise CheckpointError(f"weights file {path} is not a readable safetensors file ({exc})") from None
    try:
        data = _torch_load(path)
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


def model_tokenizer(model: nn.Module) -> str:
    """The name of the model's text tokenizer: "hash", "clip", or "hf:<model>" for a HuggingFace text encoder."""
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg.text.hf_model:
        return f"hf:{cfg.text.hf_model}"
    encoder = getattr(model, "text_encoder", None)
    return getattr(getattr(encoder, "tokenizer", None), "name", type(encoder).__name__)


def _check_tokenizer(path, kind: str, state: Mapping[str, Tensor], container: Mapping, tokenizer: str) -> None:
    """Refuse text weights trained on another tokenizer's ids than the model's (one line)."""
    if kind == "official":
        expected = "clip" if any((map_official_key(k.removeprefix("model.")) or "").startswith("text_encoder.") for k in state) else None
    elif kind == "boltzformer":
        text = container.get("boltzformer", {}).get("model_config", {}).get("text", {})
        # a HuggingFace text encoder brings its own tokenizer: its weights are matched by the key check
        expected = None if text.get("hf_model") or tokenizer.startswith("hf:") else text.get("tokenizer", "hash")
    else:  # SAM2 and X-Decoder files hold no text weights this model loads
        expected = None
    if expected is not None and expected != tokenizer:
        raise CheckpointError(
            f"{path}: its text weights were trained on {expected!r} tokenizer ids but the model's text tokenizer is "
            f"{tokenizer!r}; build the model with --set text.tokenizer={expected} (the paper-size presets use 'clip')"
        )


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load the weights in ``path`` into ``model`` where they fit; returns (and logs) a report.

    Tensors are copied one at a time from the (memory-mapped or lazily read) file into the model's
    parameters. BiomedParse v2's ``pixel_mean`` / ``pixel_std`` buffers set the model's normalisation
    (and its config, so that a converted checkpoint keeps them).

    Raises:
        CheckpointError: unreadable file, a file of no known kind, text weights of another tokenizer,
            or a tensor whose shape differs from the model's (X-Decoder decoder parts of another size
            are reported as unused instead).
    """
    state, container = read_state_dict(path)
    kind = detect_kind(state, container)
    tokenizer = model_tokenizer(model)
    _check_tokenizer(path, kind, state, container, tokenizer)
    own = model.state_dict()
    report = LoadReport(kind=kind, tokenizer=tokenizer)
    if state is not container:
        report.ignored = {k: _NOT_WEIGHTS.get(k, "checkpoint metadata") for k, v in container.items()
                          if k not in ("state_dict", "model", "boltzformer") and not isinstance(v, Tensor)}
    done: set[str] = set()
    mapper = _MAPPERS[kind]
    for key in state:
        target = key[len("model."):] if kind == "boltzformer" and key.startswith("model.") else key
        if mapper is not None:
            # Lightning checkpoints of the official code (BiomedParse v2) prefix every key with "model."
            target = mapper(key[len("model."):] if kind == "official" and key.startswith("model.") else key)
        if target is None:
            part = next((why for prefix, why in _UNUSED_PARTS.get(kind, {}).items() if key.startswith(prefix)), None)
            report.unused[key] = part or _UNUSED_OFFICIAL.get(key.removeprefix("model."), f"no counterpart in this model ({kind} layout)")
            continue
        value = state[key]
        if target in NORMALISATION_KEYS:
            _set_normalisation(model, target, value, path, key)
            report.loaded.append(key)
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
        with torch.no_grad():
            own[target].copy_(value)  # shares storage with the parameter; reads this one tensor from the file
        done.add(target)
        report.loaded.append(key)
    why = {"sam2": "SAM2 checkpoints hold the image encoder only", "xdecoder": "not in X-Decoder's model",
           "litemedsam": "LiteMedSAM's file holds the image encoder only (trained here)"}
    for key in own:
        if key not in done:
            report.missing[key] = why.get(kind, "not in the file")
    unset = [k for k in report.missing if k.startswith("backbone.")]
    if kind == "litemedsam" and unset:
        raise CheckpointError(f"{path}: LiteMedSAM's file does not set {len(unset)} of the encoder's tensors ({unset[:3]}); "
                              "it is not the lite_medsam.pth this preset was written for")
    log.info(report.summary())
    return report


def _set_normalisation(model: nn.Module, name: str, value: Tensor, path, key: str) -> None:
    buffer = getattr(model, name)
    if value.numel() not in (1, 3):
        raise CheckpointError(f"{path}: {key} has {value.numel()} values; expected 1 or 3 (one per RGB channel)")
    values = value.detach().float().flatten().expand(3)
    buffer.copy_(values.view_as(buffer))
    if getattr(model, "config", None) is not None:
        setattr(model.config, name, tuple(float(v) for v in values))
