"""Lightning module: the BoltzFormer, its loss and its optimiser.

The loss is MONAI's Dice (on sigmoid, squared denominators) + BCE, on the final prediction
resized to the target's size, plus (deep supervision) the same on every earlier layer's query-mean
prediction. Everything is in ``self.model`` so that DDP, checkpoints and precision are Lightning's.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss, TverskyLoss

from boltzformer.model.checkpoint import checkpoint_metadata
from boltzformer.data.loading import _LATERAL
from boltzformer.config import LOSSES, ModelConfig, TrainConfig, config_from_dict, config_to_dict
from boltzformer.evaluate.metrics import dice_per_sample
from boltzformer.model import build_model
from boltzformer.predict.results import gate

__all__ = ["BoltzFormerModule", "SegmentationLoss", "warmup_cosine_schedule"]

VAL_EXISTENCE_THRESHOLD = 0.5  # as evaluate_model's default existence_threshold
FINAL_LR_FRACTION = 0.02  # the cosine decays to this fraction of the learning rate


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, max_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up then cosine decay, stepped once per batch, with PyTorch's schedulers.

    Step ``s`` < ``warmup_steps`` runs at ``lr * (s + 1) / warmup_steps`` (:class:`~torch.optim.lr_scheduler.LinearLR`);
    from ``warmup_steps`` on the rate follows a cosine from ``lr`` down to ``FINAL_LR_FRACTION * lr`` at
    ``max_steps``, where training stops (:class:`~torch.optim.lr_scheduler.CosineAnnealingLR`). The same rates
    as the hand-written ``LambdaLR`` it replaced, step for step (``tests/train/test_module.py``).

    Raises:
        ValueError: ``warmup_steps`` < 0, or ``max_steps`` < 1.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, max_steps - warmup_steps), eta_min=FINAL_LR_FRACTION * optimizer.defaults["lr"]
    )
    if warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=max(1, warmup_steps - 1)
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


class _TverskyCE(torch.nn.Module):
    """MONAI's Tversky loss (alpha 0.3, beta 0.7) + BCE; MONAI combines Dice or focal with CE, not Tversky."""

    def __init__(self) -> None:
        super().__init__()
        self.tversky = TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, reduction="mean")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.tversky(logits, target) + F.binary_cross_entropy_with_logits(logits, target)


class SegmentationLoss(torch.nn.Module):
    """The segmentation loss (``TrainConfig.loss``), MONAI's, on logits resized to the target's size:

    - ``"dice_ce"``: Dice (sigmoid, squared denominators) + BCE, as the paper;
    - ``"dice_focal"``: the same Dice + focal loss (gamma 2), which weighs hard pixels up;
    - ``"tversky_ce"``: Tversky (alpha 0.3, beta 0.7: a missed target pixel costs more than a false
      one) + BCE.
    """

    def __init__(self, kind: str = "dice_ce") -> None:
        super().__init__()
        if kind == "dice_ce":
            self.loss = DiceCELoss(sigmoid=True, squared_pred=True, reduction="mean")
        elif kind == "dice_focal":
            self.loss = DiceFocalLoss(sigmoid=True, squared_pred=True, gamma=2.0, reduction="mean")
        elif kind == "tversky_ce":
            self.loss = _TverskyCE()
        else:
            raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return self.loss(logits, target)


class BoltzFormerModule(L.LightningModule):
    """Trains a BoltzFormer. Batches are dicts with "image" (B, 3, S, S), "mask" (B, 1, S, S),
    "prompt" (list of B strings)."""

    def __init__(self, model_config: dict[str, Any], train_config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_config: ModelConfig = config_from_dict(ModelConfig, model_config)
        self.train_config: TrainConfig = config_from_dict(TrainConfig, train_config)
        self.model = build_model(self.model_config)
        self.loss = SegmentationLoss(self.train_config.loss)
        for part in self.train_config.freeze:
            getattr(self.model, part).requires_grad_(False).eval()  # BatchNorm statistics (lite) stay as loaded

    def train(self, mode: bool = True) -> "BoltzFormerModule":
        """Frozen parts stay in eval mode (no dropout or drop-path) while the rest trains."""
        super().train(mode)
        for part in self.train_config.freeze:
            getattr(self.model, part).eval()
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning does not always call train() (it restores captured modes): keep frozen parts in eval
        for part in self.train_config.freeze:
            getattr(self.model, part).eval()

    @classmethod
    def create(cls, model_config: ModelConfig, train_config: TrainConfig) -> "BoltzFormerModule":
        return cls(config_to_dict(model_config), config_to_dict(train_config))

    def _flip_dims(self, batch: dict[str, Any], stage: str) -> list[int]:
        """Feature-space flips of this training batch (``TrainConfig.feature_flips``): one draw per batch
        from torch's global generator (seeded by Lightning); none for prompts that name a side."""
        if stage != "train" or not self.train_config.feature_flips or any(_LATERAL.search(p) for p in batch["prompt"]):
            return []
        flips = torch.rand(2) < 0.5
        return [d for d, f in zip((-1, -2), flips.tolist()) if f]

    def _losses(self, batch: dict[str, Any], *, aux: bool, stage: str = "train") -> tuple[torch.Tensor, torch.Tensor, Any]:
        dims = self._flip_dims(batch, stage)
        features = self.model.encode_image(batch["image"], flip_dims=dims)
        out = self.model.decode(features, batch["prompt"], return_aux=aux)
        target = batch["mask"].flip(dims) if dims else batch["mask"]
        present = batch.get("present")
        existence = None
        if out.existence_logits is not None and present is not None:
            present = present.to(out.existence_logits.dtype)
            existence = F.binary_cross_entropy_with_logits(out.existence_logits.float(), present.float())
        if existence is not None:
            # with an existence head, the masks learn from the images that hold their target; the head says
            # whether there is one (the product of the two is the prediction)
            keep = present > 0.5
            if not bool(keep.any()):
                # no positive in this batch: a zero that still touches every mask parameter (DDP needs it)
                zero = out.logits.sum() * 0.0 + sum(a.sum() for a in out.aux_logits) * 0.0
                return zero + self.train_config.existence_weight * existence, zero, out
            pick = lambda x: x[keep]  # noqa: E731
        else:
            pick = lambda x: x  # noqa: E731
        main = self.loss(pick(out.logits), pick(target))
        total = main
        if aux and out.aux_logits:
            w = self.train_config.aux_weight
            total = total + w * sum(self.loss(pick(a), pick(target)) for a in out.aux_logits) / len(out.aux_logits)
        if existence is not None:
            total = total + self.train_config.existence_weight * existence
            self.log(f"{stage}/loss_existence", existence, batch_size=len(batch["prompt"]), sync_dist=stage == "val")
        return total, main, out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        total, main, _ = self._losses(batch, aux=self.train_config.deep_supervision)
        B = len(batch["prompt"])
        self.log("train/loss", total, prog_bar=True, batch_size=B)
        self.log("train/loss_final", main, batch_size=B)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Logs ``val/dice``, which chooses ``best.ckpt``: the report's Dice (:func:`dice_per_sample`, the
        same empty-target rules) of the mask the evaluator scores (probability > 0.5, emptied where the
        existence head says absent), on the validation batch's grid."""
        _, main, out = self._losses(batch, aux=False, stage="val")
        B = len(batch["prompt"])
        logits = F.interpolate(out.logits, size=batch["mask"].shape[-2:], mode="bilinear", align_corners=False)
        pred = logits > 0  # probability > 0.5, the evaluator's threshold
        if out.existence_logits is not None:  # the one existence gate (predict/results.py), one value per image
            pred = gate(pred, torch.sigmoid(out.existence_logits.float()), VAL_EXISTENCE_THRESHOLD)  # (B,) values
        dice = dice_per_sample(pred, batch["mask"] >= 0.5)
        self.log("val/loss", main, prog_bar=False, batch_size=B, sync_dist=True)
        self.log("val/dice", dice.mean(), prog_bar=True, batch_size=B, sync_dist=True)

    def configure_optimizers(self):
        tc = self.train_config
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:  # frozen (TrainConfig.freeze): no optimiser state
                continue
            (no_decay if p.dim() < 2 or "embed" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tc.lr,
        )

        sched = warmup_cosine_schedule(opt, warmup_steps=tc.warmup_steps, max_steps=tc.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written before :func:`warmup_cosine_schedule` holds a ``LambdaLR``'s state: replace
        it by the new schedule's state at the same step, so that such a run resumes."""
        states = checkpoint.get("lr_schedulers") or []
        if len(states) == 1 and "lr_lambdas" in states[0]:
            tc = self.train_config
            opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=tc.lr)
            sched = warmup_cosine_schedule(opt, warmup_steps=tc.warmup_steps, max_steps=tc.max_steps)
            with warnings.catch_warnings():  # stepping the schedule alone, without optimizer.step()
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(int(states[0]["last_epoch"])):
                    sched.step()
            checkpoint["lr_schedulers"] = [sched.state_dict()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["boltzformer"] = checkpoint_metadata(self.model)
