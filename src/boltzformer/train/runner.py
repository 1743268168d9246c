"""Run a training job with PyTorch Lightning: data, trainer, checkpoints, logs and resume.

One "epoch" is the whole run (``max_steps`` batches drawn with a seeded sampler), so the progress
bar shows the steps left and an estimate of the time left. ``--devices N`` uses Lightning's DDP
(gloo on CPU, NCCL on GPUs).

Checkpoints: ``best.ckpt`` and ``last.ckpt`` at every validation, ``last.ckpt`` also every
``checkpoint_every_min`` minutes of training (Lightning's ``train_time_interval``), each written to a
temporary name and renamed, so a run killed at any moment resumes from its last whole checkpoint.
A resume refuses a preset, data or model setting that differs from the run's ``config.json`` (before
anything is touched), appends to ``logs/metrics.csv`` (the rows logged after the checkpoint it resumes
from are dropped: they are logged again) and keeps the progress bar's total.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from boltzformer.io.atomic import atomic_paths, write_json_atomic
from boltzformer.model.checkpoint import CheckpointError, load_checkpoint
from boltzformer.config import ModelConfig, TrainConfig, config_from_dict, config_to_dict
from boltzformer.data.loading import ModelInputDataset, folds_per_path, open_dataset, size_buckets
from boltzformer.data.negatives import WithNegatives
from boltzformer.data.patches import SIZE_WEIGHTS, PatchDataset, size_weights, window_step
from boltzformer.train.features import FeatureCache
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
    # a frozen backbone's features cached in this folder (boltzformer.train.features); needs train.freeze
    # to hold "backbone" and turns on train.feature_flips
    feature_cache: Path | None = None
    # cross-validation fold (k, n) of every data folder (data/folder.py), or one (k, n) per folder in the
    # order of ``data`` (each folder with its own fold count; data/loading.py folds_per_path)
    fold: tuple[int, int] | Sequence[tuple[int, int]] | None = None
    # train a MONAI peer (train/peer.py) with this loop instead of the BoltzFormer; ``model`` gives its
    # image size and pixel normalisation
    peer: "PeerConfig | None" = None
    checkpoint_every_min: float = 10.0  # also write last.ckpt every this many minutes of training (0: never)


# train settings a resume may change (how long, how often to validate, where to run); any other
# difference from the run's config.json is refused. warmup_steps follows max_steps (cli).
_RESUMABLE_TRAIN = ("max_steps", "warmup_steps", "val_every", "val_batches", "num_workers", "devices", "accelerator")


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, to a temporary name then renamed (a kill never leaves half a file)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_paths(path) as (tmp,):
            torch.save(checkpoint, tmp)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps the history of the run it resumes: the rows logged before step
    ``from_step`` stay (later ones are dropped, they are logged again), new rows are appended."""

    def __init__(self, log_dir: str, from_step: int) -> None:
        self._from_step = from_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), [r for r in reader if _step(r) < self._from_step]
        self.metrics_keys = sorted(keys)
        with atomic_paths(path) as (tmp,), open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


def _step(row: dict[str, str]) -> float:
    """The row's step; a row cut by a kill (no step) sorts last and is dropped."""
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return float("inf")


class _RunLogger(CSVLogger):
    """``logs/metrics.csv``; on a resume it appends to the earlier history instead of replacing it."""

    def __init__(self, out: Path, resume_step: int | None, flush_every: int) -> None:
        # flushed at every logged step, so a killed run keeps its history up to the kill
        super().__init__(save_dir=out, name="logs", version="", flush_logs_every_n_steps=flush_every)
        self._resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            if self._resume_step is None:
                self._experiment = ExperimentWriter(log_dir=self.log_dir)
            else:
                self._experiment = _AppendingWriter(self.log_dir, self._resume_step)
        return self._experiment


def _fold_record(fold: Any) -> list | None:
    """``TrainJob.fold`` as JSON: [k, n] for one fold of every folder (as runs have always recorded it),
    [[k, n], ...] for one per folder."""
    if not fold:
        return None
    return [list(f) if isinstance(f, (tuple, list)) else f for f in fold]


def _run_config(job: TrainJob, tc: TrainConfig) -> dict[str, Any]:
    from boltzformer.provenance import file_sha256, git_commit, package_version

    return {
        "model": config_to_dict(job.model),
        "train": config_to_dict(tc),
        "data": job.data if isinstance(job.data, str) else list(job.data),
        "data_seed": job.data_seed,
        "fold": _fold_record(job.fold),
        "synthetic_counts": job.synthetic_counts,
        **({"peer": dataclasses.asdict(job.peer)} if job.peer is not None else {}),
        "init": None if job.init is None else {"path": str(job.init), "sha256": file_sha256(job.init)},
        "made_by": {"version": package_version(), "commit": git_commit()},
    }


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


class _StepsBar(TQDMProgressBar):
    """The training bar counts optimiser steps of the whole run (global step / max_steps), so a resumed
    run starts where it stopped with the run's total, whatever Lightning's epoch bookkeeping says."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer, *_)
        bar = self.train_progress_bar
        bar.total = trainer.max_steps
        bar.n = bar.last_print_n = trainer.global_step
        bar.set_description("Training steps")
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = trainer.global_step
        if self.train_progress_bar is not None and self._should_update(n, trainer.max_steps):
            self.train_progress_bar.n = n
            self.train_progress_bar.refresh()
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


class _NoTips(logging.Filter):
    """Drops Lightning's advertising tips ("Tip: ... try installing litlogger / litmodels") from the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.getMessage())


def _quiet_lightning_tips() -> None:
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in log.filters):
        log.addFilter(_NoTips())


def _check_resume(out: Path, new: dict[str, Any]) -> None:
    """Refuse (one line naming the settings) a resume whose preset, data or model settings differ."""
    path = out / "config.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--resume: cannot read the run's {path} ({type(exc).__name__}); is {out} a run folder?") from None
    new = json.loads(json.dumps(new))
    # a run made by an older version: settings added since (at their defaults) and retired ones (at their
    # only former value) do not make it another run, so it reads through the config classes first
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        if isinstance(old.get(section), dict):
            try:
                old[section] = json.loads(json.dumps(config_to_dict(config_from_dict(cls, old[section]))))
            except (TypeError, ValueError):
                pass  # unreadable: compared as stored, so the differences are named below
    differ = []
    for section in ("model", "train", "data", "data_seed", "fold", "synthetic_counts", "peer"):
        a, b = _flat(old.get(section), section), _flat(new.get(section), section)
        for key in sorted(set(a) | set(b)):
            if section == "train" and key.split(".", 1)[1] in _RESUMABLE_TRAIN:
                continue
            if a.get(key) != b.get(key):
                differ.append(f"{key} {a.get(key)!r} (run) vs {b.get(key)!r} (asked)")
    differ.sort(key=lambda d: not d.startswith(("model.preset", "data")))  # the preset and data first
    if differ:
        raise ValueError(f"--resume: {out} was trained with other settings: {'; '.join(differ[:6])}"
                         + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
                         + "; resume with the run's own settings (its config.json) or train into a new --out")


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
        scale = None if tc.scale_jitter == "auto" else tc.scale_jitter
        train_ds = ModelInputDataset(train_base, size, augment=augment, center=center, scale=scale, copy_paste=tc.copy_paste)
        val_ds = ModelInputDataset(open_dataset(job.data, "val", **kwargs), size, center=center)
        if tc.image_weighting:
            weights = [SIZE_WEIGHTS[b] for b in size_buckets(train_base)]
            sampler = WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)
        else:
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
    folds_per_path(job.fold, job.data)  # a bad fold is named before a resume compares it
    run_config = _run_config(job, tc)
    resume_step = None
    if job.resume:
        _check_resume(out, run_config)
        resume_step = int(torch.load(last, map_location="cpu", weights_only=True).get("global_step", 0))
        if resume_step >= tc.max_steps:
            raise ValueError(f"--resume: {last} is at step {resume_step}; ask for more --max-steps than that to continue")
    _quiet_lightning_tips()
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
    write_json_atomic(run_config, out / "config.json")
    checkpoint = ModelCheckpoint(
        dirpath=out, filename="best", monitor="val/dice", mode="max", save_top_k=1, save_last=True, auto_insert_metric_name=False
    )
    callbacks: list[L.Callback] = [checkpoint, LearningRateMonitor(logging_interval="step")]
    if job.checkpoint_every_min > 0:
        callbacks.append(ModelCheckpoint(dirpath=out, save_top_k=0, save_last=True, enable_version_counter=False,
                                         train_time_interval=datetime.timedelta(minutes=job.checkpoint_every_min)))
    if job.progress:
        callbacks.append(_StepsBar(refresh_rate=5))
    val_every = min(tc.val_every, tc.max_steps)
    with warnings.catch_warnings():
        # the run folder holds config.json before the first checkpoint: not a sign of another run's files
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
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
            logger=_RunLogger(out, resume_step, min(10, tc.max_steps)),
            callbacks=callbacks,
            plugins=[_AtomicCheckpointIO()],
            enable_progress_bar=job.progress,
            enable_model_summary=False,
            log_every_n_steps=min(10, tc.max_steps),
            deterministic=False,
        )
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if job.resume else None)
    # the final state, whether or not the last step fell on a validation
    trainer.save_checkpoint(last, weights_only=False)  # with optimiser state, for --resume
    return last
