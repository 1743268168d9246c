"""Run a training job with PyTorch Lightning: data, trainer, checkpoints, logs and resume.

One "epoch" is the whole run (``max_steps`` batches drawn with a seeded sampler), so the progress
bar shows the steps left and an estimate of the time left. ``--devices N`` uses Lightning's DDP
(gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from boltzformer.atomic import write_json_atomic
from boltzformer.checkpoint import CheckpointError, load_checkpoint
from boltzformer.config import ModelConfig, TrainConfig, config_to_dict
from boltzformer.data.loading import ModelInputDataset, open_dataset
from boltzformer.data.negatives import WithNegatives
from boltzformer.data.patches import PatchDataset, size_weights, window_step
from boltzformer.features import FeatureCache
from boltzformer.data.synthetic import SyntheticDataset
from boltzformer.train.module import BoltzFormerModule

if TYPE_CHECKING:
    from boltzformer.train.peer import PeerConfig

__all__ = ["TrainJob", "run_training"]

_PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


@dataclass
class TrainJob:
    model: ModelConfig
    train: TrainConfig
    data: str | Sequence[str]
    out: Path
    data_seed: int = 0
    synthetic_counts: dict[str, int] | None = None
    resume: bool = False
    init: Path | None = None  # start from these weights (fine-tuning); same architecture
    progress: bool = True
    # a frozen backbone's features cached in this folder (boltzformer.features); needs train.freeze
    # to hold "backbone" and turns on train.feature_flips
    feature_cache: Path | None = None
    fold: tuple[int, int] | None = None  # cross-validation fold (k, n) of the data folders (data/folder.py)
    # train a MONAI peer (train/peer.py) with this loop instead of the BoltzFormer; ``model`` gives its
    # image size and pixel normalisation
    peer: "PeerConfig | None" = None


def _loaders(job: TrainJob, tc: TrainConfig) -> tuple[DataLoader, DataLoader]:
    size = job.model.image_size
    kwargs = {"seed": job.data_seed, "synthetic_size": size, "synthetic_counts": job.synthetic_counts, "fold": job.fold}
    train_base = open_dataset(job.data, "train", **kwargs)
    if tc.negative_ratio > 0:
        train_base = WithNegatives(train_base, tc.negative_ratio, seed=job.data_seed)
    center = job.model.pad == "center"
    num_samples = tc.max_steps * tc.batch_size * max(1, tc.devices)
    generator = torch.Generator().manual_seed(tc.seed)
    sampler: Sampler
    if tc.patch_overlap is not None:
        # native resolution: patches on the sliding window's grid; the model flips features when it caches them
        step = window_step(size, tc.patch_overlap)
        train_ds: Dataset = PatchDataset(train_base, size, step=step, target_fraction=tc.target_fraction,
                                         flips=not tc.feature_flips)
        val_ds: Dataset = PatchDataset(open_dataset(job.data, "val", **kwargs), size, step=step,
                                       target_fraction=tc.target_fraction, seed=job.data_seed)
        weights = size_weights(train_ds.area_fractions()) if tc.size_weighting else [1.0] * len(train_ds)
        sampler = WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)
    else:
        # the synthetic benchmark draws new images from its generator and places its objects anywhere:
        # flips are enough there; real data gets crops and intensity changes too
        synthetic = isinstance(train_base, SyntheticDataset) or isinstance(getattr(train_base, "base", None), SyntheticDataset)
        augment = False if tc.feature_flips else "flips" if synthetic else True
        train_ds = ModelInputDataset(train_base, size, augment=augment, center=center)
        val_ds = ModelInputDataset(open_dataset(job.data, "val", **kwargs), size, center=center)
        sampler = RandomSampler(train_ds, replacement=True, num_samples=num_samples, generator=generator)
    common = {"num_workers": tc.num_workers, "persistent_workers": tc.num_workers > 0}
    train_dl = DataLoader(train_ds, batch_size=tc.batch_size, sampler=sampler, drop_last=True, **common)
    val_dl = DataLoader(val_ds, batch_size=max(tc.batch_size, 16), shuffle=False, **common)
    return train_dl, val_dl


def _load_initial_weights(module: BoltzFormerModule, path: Path) -> None:
    source = load_checkpoint(path)
    try:
        module.model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise CheckpointError(
            f"--init {path} does not fit the model being trained ({str(exc).splitlines()[-1].strip()}); "
            "train with the same preset and sizes as that checkpoint"
        ) from None


def run_training(job: TrainJob) -> Path:
    """Train; returns the path of ``last.ckpt`` in ``job.out``."""
    tc = job.train
    if tc.precision not in _PRECISION:
        raise ValueError(f"precision must be one of {sorted(_PRECISION)}, got {tc.precision!r}")
    out = Path(job.out)
    last = out / "last.ckpt"
    if job.resume and not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last}")
    if not job.resume and last.exists():
        raise FileExistsError(f"{out} already holds a run (last.ckpt); use --resume to continue it or another --out")
    if job.feature_cache is not None:
        if "backbone" not in tc.freeze:
            raise ValueError("--feature-cache needs a frozen backbone: add --freeze backbone")
        tc = dataclasses.replace(tc, feature_flips=True)
    L.seed_everything(tc.seed, workers=True, verbose=False)
    train_dl, val_dl = _loaders(job, tc)  # checks the data before anything is written
    if job.peer is not None:
        from boltzformer.train.peer import PeerModule

        if job.feature_cache is not None:
            raise ValueError("--feature-cache applies to a BoltzFormer's frozen backbone, not to the MONAI peer")
        if job.init is not None:
            raise ValueError("init (fine-tuning) applies to BoltzFormer checkpoints, not to the MONAI peer")
        module: BoltzFormerModule = PeerModule.create(job.model, tc, job.peer)
    else:
        module = BoltzFormerModule.create(job.model, tc)
    if job.init is not None and not job.resume:
        _load_initial_weights(module, Path(job.init))
    if job.feature_cache is not None:
        module.model.feature_cache = FeatureCache(root=job.feature_cache)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        {
            "model": config_to_dict(job.model),
            "train": config_to_dict(tc),
            "data": job.data if isinstance(job.data, str) else list(job.data),
            "data_seed": job.data_seed,
            "fold": list(job.fold) if job.fold else None,
            "synthetic_counts": job.synthetic_counts,
            **({"peer": dataclasses.asdict(job.peer)} if job.peer is not None else {}),
        },
        out / "config.json",
    )
    checkpoint = ModelCheckpoint(
        dirpath=out, filename="best", monitor="val/dice", mode="max", save_top_k=1, save_last=True, auto_insert_metric_name=False
    )
    callbacks: list[L.Callback] = [checkpoint, LearningRateMonitor(logging_interval="step")]
    if job.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    val_every = min(tc.val_every, tc.max_steps)
    trainer = L.Trainer(
        default_root_dir=out,
        max_steps=tc.max_steps,
        max_epochs=-1,
        accelerator=tc.accelerator,
        devices=tc.devices,
        strategy="ddp" if tc.devices > 1 else "auto",
        precision=_PRECISION[tc.precision],
        gradient_clip_val=tc.grad_clip or None,
        val_check_interval=val_every,
        limit_val_batches=tc.val_batches if tc.val_batches is not None else 1.0,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=CSVLogger(save_dir=out, name="logs", version=""),
        callbacks=callbacks,
        enable_progress_bar=job.progress,
        enable_model_summary=False,
        log_every_n_steps=min(10, tc.max_steps),
        deterministic=False,
    )
    trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if job.resume else None)
    # the final state, whether or not the last step fell on a validation
    trainer.save_checkpoint(last, weights_only=False)  # with optimiser state, for --resume
    return last
