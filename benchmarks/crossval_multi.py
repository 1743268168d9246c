"""The multi-dataset models of crossval.py: for each fold k, one text-prompted model trained on the chosen
datasets together, then tested on each dataset's fold-k test split apart.

Each dataset keeps its own fold count (``crossval.DATASETS``), so its fold-k test split is exactly the one
its single-dataset models are tested on, and the rows pair fold by fold. A dataset with fewer folds than
k + 1 (Kvasir has 3, LIDC and LGG 4) trains with its fold k mod n (its training split of that fold) and
is not tested on fold k: none of its patients is then both trained on and tested.

The fold's model is trained once, in ``<runs>/multi/<model>/fold<k>/run`` (resumed from ``last.ckpt`` when
interrupted); ``train.json`` beside that folder says it finished, on which datasets and folds, after how
many steps and seconds, so that each dataset's evaluation finds it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import write_json  # noqa: E402

from boltzformer.train.runner import TrainJob, run_training  # noqa: E402

#: trained on every chosen dataset at once, with negative prompts and the existence head
MULTI_MODELS = ("lite-multi", "tiny-multi")


def train_folds(counts: dict[str, int], fold: int) -> dict[str, tuple[int, int]]:
    """Each dataset's ``(k, n)`` in the training of multi fold ``fold``: its own fold, or fold mod n for a
    dataset with fewer folds (trained on, not tested on that fold). ``counts``: dataset -> its fold count.

    Raises:
        ValueError: ``fold`` is not in [0, the most folds of any dataset).
    """
    if not 0 <= fold < max(counts.values()):
        raise ValueError(f"fold must be in [0, {max(counts.values())}) for the fold counts {counts}, got {fold}")
    return {name: (fold % n, n) for name, n in counts.items()}


def train_multi(job: TrainJob, folds: dict[str, tuple[int, int]]) -> tuple[Path, float | None]:
    """Train the fold's model in ``job.out`` once, resuming an interrupted run; returns its ``last.ckpt``
    and the seconds of training (of the last session, for a resumed run; None for a run that finished
    but was stopped before it could say so).

    ``job.data`` lists the datasets' folders and ``job.fold`` their folds, in the order of ``folds``
    (dataset name -> ``(k, n)``), which ``train.json`` records. A finished run trained on other datasets,
    folds or steps is refused: it is another model.
    """
    out = Path(job.out)
    done = out.parent / "train.json"
    record = {"trained_on": {name: list(f) for name, f in folds.items()}, "steps": job.train.max_steps,
              "negative_ratio": job.train.negative_ratio, "existence": job.model.decoder.existence}
    if done.exists():
        found = json.loads(done.read_text())
        differ = [f"{k} {found.get(k)!r} (there) vs {v!r} (asked)" for k, v in record.items() if found.get(k) != v]
        if differ:
            raise SystemExit(f"{done}: that fold's model was trained otherwise: {'; '.join(differ)}; ask for the "
                             "same --datasets, --steps and --negatives, or give another --runs")
        return out / "last.ckpt", found["train_seconds"]
    last, seconds = train_or_reuse(job)
    write_json({**record, "train_seconds": seconds}, done)
    return last, seconds


def train_or_reuse(job: TrainJob) -> tuple[Path, float | None]:
    """Train ``job`` (resumed from its ``last.ckpt`` if there is one); a run that already reached its steps
    (stopped while being tested) is not trained again. Returns ``last.ckpt`` and the seconds of training
    (None where the run had finished before: how long it took is not known)."""
    last = Path(job.out) / "last.ckpt"
    if last.exists() and torch.load(last, map_location="cpu", weights_only=True)["global_step"] >= job.train.max_steps:
        return last, None
    t0 = time.perf_counter()
    last = run_training(dataclasses.replace(job, resume=last.exists()))
    return last, round(time.perf_counter() - t0, 1)


def note(datasets: list[str], negatives: float) -> str:
    """The markdown table's note on the multi-dataset rows."""
    return (f"`lite-multi` / `tiny-multi`: for fold k, one model trained on {', '.join(datasets)} together (the union "
            "of each dataset's own fold-k training split, so each dataset's fold-k test set is that of its "
            f"single-dataset rows), with negative prompts (ratio {negatives}: an image paired with another "
            "dataset's prompt and an empty mask) and the existence head (masks gated at probability 0.5 when "
            "tested), then tested on each dataset's fold-k test split apart. A dataset with fewer folds than "
            "k + 1 trains with its fold k mod n and is not tested on fold k. Same steps and batch as one "
            "single-dataset model, spread over all datasets; train min counts the shared model in every "
            "dataset's row.")
