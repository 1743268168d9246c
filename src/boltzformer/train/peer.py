"""A peer from a maintained library: a MONAI network with one output channel per target kind.

This is how nnU-Net-style per-class experts solve a promptable benchmark whose prompts name a fixed
set of kinds (the synthetic benchmark's :data:`~boltzformer.data.synthetic.KINDS`, or a real set's
target, "nodule" or "polyp", which a prompt names by that word): the network predicts every kind at
once and the prompt only picks the channel. It has no text encoder, so it cannot follow a prompt
outside those kinds; it is the baseline that BoltzFormer must beat on the same data, steps, batch,
augmentation and loss.

:class:`PromptedPeer` has the BoltzFormer's inference interface (``config.image_size``, ``device``,
``encode_image``, ``decode``), so :func:`boltzformer.evaluate.evaluate_model` scores it unchanged,
and :class:`PeerModule` is the BoltzFormer's Lightning module with this network in place of the
model, so :func:`boltzformer.train.runner.run_training` trains it with the same loop, loss and
optimiser (``TrainJob(peer=PeerConfig(...))``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from boltzformer.config import ModelConfig, TrainConfig, config_from_dict
from boltzformer.data.synthetic import KINDS, SYNONYMS
from boltzformer.train.module import BoltzFormerModule, SegmentationLoss

__all__ = ["PEER_NETWORKS", "PeerConfig", "PeerModule", "PromptedPeer", "kind_names", "load_peer"]

PEER_NETWORKS = ("unet", "dynunet", "segresnet")
_KEY = "boltzformer_peer"


@dataclass
class PeerConfig:
    network: str = "unet"  # one of PEER_NETWORKS (MONAI's UNet, DynUNet, SegResNet)
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)  # filters per resolution level (unet, dynunet)
    # one output channel per kind, in this order; a kind of the synthetic benchmark answers to its
    # SYNONYMS, any other kind (a real dataset's target: "nodule", "polyp") to its own name
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        if self.network not in PEER_NETWORKS:
            raise ValueError(f"peer network must be one of {PEER_NETWORKS}, got {self.network!r}")
        self.channels = tuple(self.channels)
        self.kinds = tuple(self.kinds)
        if len(self.channels) < 2 or any(not isinstance(c, int) or c < 1 for c in self.channels):
            raise ValueError(f"peer channels must be >= 2 positive integers, got {self.channels}")
        if not self.kinds or any(not isinstance(k, str) or not k.strip() for k in self.kinds):
            raise ValueError(f"peer kinds must be one or more non-empty names, got {list(self.kinds)}")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"peer kinds must differ, got {list(self.kinds)}")
        # a prompt must name one kind only: no name of one kind may occur in a name of another
        for a, b in ((a, b) for a in self.kinds for b in self.kinds if a != b):
            clash = [(x, y) for x in kind_names(a) for y in kind_names(b) if x in y]
            if clash:
                raise ValueError(f"peer kinds {a!r} and {b!r} overlap: {clash[0][0]!r} occurs in {clash[0][1]!r}, so a "
                                 "prompt could name both")


def kind_names(kind: str) -> tuple[str, ...]:
    """The names a prompt may use for ``kind``: its synthetic SYNONYMS, else the kind itself (lower case)."""
    return SYNONYMS.get(kind, (kind.strip().lower(),))


@dataclass
class PeerOutput:
    logits: Tensor  # (B, 1, H, W): the prompted kind's channel
    aux_logits: list[Tensor] = field(default_factory=list)  # no deep supervision
    existence_logits: Tensor | None = None  # no existence head


def _build_network(cfg: PeerConfig) -> nn.Module:
    from monai.networks.nets import DynUNet, SegResNet, UNet

    k = len(cfg.kinds)
    n = len(cfg.channels)
    if cfg.network == "unet":
        return UNet(spatial_dims=2, in_channels=3, out_channels=k, channels=cfg.channels, strides=(2,) * (n - 1), num_res_units=2)
    if cfg.network == "dynunet":
        return DynUNet(spatial_dims=2, in_channels=3, out_channels=k, kernel_size=[3] * n, strides=[1] + [2] * (n - 1),
                       upsample_kernel_size=[2] * (n - 1), filters=list(cfg.channels), res_block=True)
    return SegResNet(spatial_dims=2, init_filters=cfg.channels[0], in_channels=3, out_channels=k)


class PromptedPeer(nn.Module):
    """A MONAI network predicting every kind; the prompt picks the channel (see the module doc).

    Args:
        model: the :class:`ModelConfig` whose ``image_size`` and pixel normalisation it shares.
        peer: which network and kinds.
    """

    def __init__(self, *, model: ModelConfig, peer: PeerConfig) -> None:
        super().__init__()
        self.config = model
        self.peer_config = peer
        self.net = _build_network(peer)
        self.register_buffer("pixel_mean", torch.tensor(model.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(model.pixel_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        # every name of every kind (no name of one kind occurs in a name of another: PeerConfig checks)
        self._names = [(name, i) for i, kind in enumerate(peer.kinds) for name in kind_names(kind)]

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def channel_of(self, prompts: Sequence[str]) -> Tensor:
        """The output channel each prompt names: the kind one of whose names occurs in it.

        Raises:
            ValueError: a prompt names none of the kinds, or names two different kinds.
        """
        out = []
        for prompt in prompts:
            text = str(prompt).lower()
            kinds = sorted({i for name, i in self._names if name in text})
            if len(kinds) != 1:
                what = "none" if not kinds else f"several ({[self.peer_config.kinds[i] for i in kinds]})"
                raise ValueError(f"prompt {prompt!r} names {what} of the peer's kinds {list(self.peer_config.kinds)}")
            out.append(kinds[0])
        return torch.tensor(out, dtype=torch.long)

    def encode_image(self, images: Tensor, *, flip_dims: Sequence[int] = ()) -> Tensor:
        """Logits of every kind (B, K, H, W) for images (B, 3, H, W), values 0-255; ``flip_dims`` flips
        the images first (the training module's feature-space flips, as ``BoltzFormer.encode_image``)."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        return self.net(x.flip(list(flip_dims)) if flip_dims else x)

    def decode(self, features: Tensor, prompts: Sequence[str], *, generator: torch.Generator | None = None,
               return_aux: bool = False, return_sampling: bool = False) -> PeerOutput:
        """The prompted kind's channel of each image; ``generator`` is unused (nothing is sampled)."""
        if len(prompts) != features.shape[0]:
            raise ValueError(f"got {features.shape[0]} images but {len(prompts)} prompts: give one prompt per image")
        idx = self.channel_of(prompts).to(features.device)
        return PeerOutput(logits=features[torch.arange(len(idx), device=features.device), idx][:, None])

    def forward(self, images: Tensor, prompts: Sequence[str], *, generator: torch.Generator | None = None,
                return_aux: bool = False, return_sampling: bool = False) -> PeerOutput:
        return self.decode(self.encode_image(images), prompts)


class PeerModule(BoltzFormerModule):
    """:class:`BoltzFormerModule` (same loss, optimiser, schedule, validation) training a :class:`PromptedPeer`."""

    def __init__(self, model_config: dict[str, Any], train_config: dict[str, Any], peer_config: dict[str, Any]) -> None:
        L.LightningModule.__init__(self)
        self.save_hyperparameters()
        self.model_config = config_from_dict(ModelConfig, model_config)
        self.train_config = config_from_dict(TrainConfig, train_config)
        if self.train_config.freeze:
            raise ValueError(f"freeze {list(self.train_config.freeze)} does not apply to the MONAI peer")
        self.peer_config = PeerConfig(**peer_config)
        self.model = PromptedPeer(model=self.model_config, peer=self.peer_config)
        self.loss = SegmentationLoss(self.train_config.loss)

    @classmethod
    def create(cls, model_config: ModelConfig, train_config: TrainConfig, peer: PeerConfig) -> "PeerModule":  # type: ignore[override]
        from boltzformer.config import config_to_dict

        return cls(config_to_dict(model_config), config_to_dict(train_config), asdict(peer))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from boltzformer.config import config_to_dict

        checkpoint[_KEY] = {"model_config": config_to_dict(self.model_config), "peer_config": asdict(self.peer_config)}


def load_peer(path: str | os.PathLike) -> PromptedPeer:
    """The :class:`PromptedPeer` of a ``last.ckpt`` written by ``run_training`` with a peer, in eval mode."""
    path = Path(path)
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or _KEY not in data:
        raise ValueError(f"checkpoint {path} is not a MONAI peer checkpoint (no '{_KEY}' entry)")
    meta = data[_KEY]
    model = PromptedPeer(model=config_from_dict(ModelConfig, meta["model_config"]), peer=PeerConfig(**meta["peer_config"]))
    state = {k[len("model."):]: v for k, v in data["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval()
