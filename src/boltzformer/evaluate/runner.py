"""A model over a dataset (:func:`evaluate_model`) and K sampled passes over a batch (:func:`predict_passes`),
both through the one inference engine (:class:`~boltzformer.predict.engine.Predictor`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from boltzformer.evaluate.boundary import NSD_TOLERANCE
from boltzformer.evaluate.confidence import POOR_DICE, existence_summary, pairwise_agreement
from boltzformer.evaluate.metrics import _mean
from boltzformer.evaluate.report import SegmentationReport
from boltzformer.predict.engine import Predictor
from boltzformer.predict.results import Passes, summarize


# ---------------------------------------------------------------------------------------- model inference


def predict_passes(
    model: Any,
    images: Sequence[torch.Tensor],
    prompts: Sequence[str],
    *,
    image_size: int,
    generators: Sequence[torch.Generator],
    window_overlap: float | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Probability maps of K sampled passes, one per generator, for a batch of images (3, H_i, W_i) 0-255:
    :meth:`Predictor.set_image_batch <boltzformer.predict.engine.Predictor.set_image_batch>` (encoded once)
    then :meth:`~boltzformer.predict.engine.Predictor.predict_batch` with ``generators``. With
    ``window_overlap`` the images keep their resolution (the model's input window slides over each).

    Returns:
        ``(probabilities, existence)``: one (K, H_i, W_i) float tensor of probabilities per image, on the
        CPU, on the image's own grid; and (B, K) probabilities that the target is in the image, or
        ``None`` for a model without an existence head.
    """
    predictor = Predictor(model, image_size=image_size, window_overlap=window_overlap)
    predictor.set_image_batch(images)
    passes = predictor.predict_batch(prompts, generators=generators)
    if passes[0].existence is None:
        return [p.probabilities for p in passes], None
    return [p.probabilities for p in passes], torch.stack([p.existence for p in passes])  # type: ignore[misc]


def evaluate_model(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 16,
    seed: int = 0,
    samples: int = 1,
    threshold: float = 0.5,
    existence_threshold: float = 0.5,
    limit: int | None = None,
    lesion_iou: float | None = None,
    nsd_tolerance: float = NSD_TOLERANCE,
    poor_dice: float = POOR_DICE,
    progress: bool = False,
    window_overlap: float | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` and score every sample at its original resolution.

    Each image is padded to a square and resized to the model's input, and the prediction is mapped
    back to the image's own grid, so every metric is measured against the original mask (distances in
    mm where a sample has a ``"spacing"`` (row, col) in mm, else in pixels).

    With ``samples=K > 1`` every image gets K passes of the sampled attention; pass k draws from a
    generator seeded ``seed + k`` (carried from batch to batch), the mask scored is the mean of the K
    probability maps above ``threshold``, and each sample records the agreement of the K thresholded
    masks (:func:`pairwise_agreement`); the report's ``"uncertainty"`` says how well agreement predicts
    a poor mask, next to the mean probability inside the mask (recorded for any K). ``samples=1`` is the plain single pass with a generator seeded ``seed``. The same
    ``seed``, ``samples`` and ``batch_size`` give a bit-identical report. For a model with an existence
    head the mask is empty where the mean probability that the target is there is below
    ``existence_threshold``, as :class:`~boltzformer.predict.Predictor` does.

    Args:
        model: a :class:`~boltzformer.model.BoltzFormer`.
        dataset: items with ``"image"`` (3, H, W) 0-255, ``"mask"`` (1, H, W), ``"prompt"``, ``"id"``,
            and optionally ``"spacing"``.
        batch_size: images per forward pass.
        seed: seed of the sampled attention.
        samples: K, passes per image.
        threshold: probability above which a pixel is in the mask.
        existence_threshold: with an existence head, the probability of presence below which the mask is empty.
        limit: evaluate the first ``limit`` items only.
        lesion_iou, nsd_tolerance, poor_dice: as in :class:`SegmentationReport`.
        progress: show a progress bar.
        window_overlap: native resolution: slide the model's input window over each image with this
            overlap (Gaussian blending) instead of resizing it (models trained on native patches).

    Returns:
        The report dict of :meth:`SegmentationReport.compute`, plus ``"seed"``, ``"sampling_passes"`` (K),
        ``"pass_seeds"``, ``"threshold"`` and ``"existence_threshold"`` (None without an existence head).

    Raises:
        ValueError: a bad argument, or an empty dataset.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1 (passes per image), got {samples!r}")
    for name, value in (("threshold", threshold), ("existence_threshold", existence_threshold)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    report = SegmentationReport(lesion_iou=lesion_iou, nsd_tolerance=nsd_tolerance, poor_dice=poor_dice)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n <= 0:
        raise ValueError("the dataset to evaluate is empty")
    predictor = Predictor(model, image_size=model.config.image_size, threshold=threshold, seed=seed,
                          existence_threshold=existence_threshold, window_overlap=window_overlap)
    generators = predictor.generators(samples)  # carried on from batch to batch (the engine's seeding rule)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="evaluate" if samples == 1 else f"evaluate ({samples} passes)", unit="img")
    gated = False
    presence: list[tuple[float, bool]] = []  # (mean existence probability, the target is there) per sample
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        predictor.set_image_batch([s["image"] for s in items])  # encoded once for the K passes
        passes: list[Passes] = predictor.predict_batch([s["prompt"] for s in items], generators=generators)
        for s, p in zip(items, passes):  # p.probabilities: K x H x W
            r = summarize(p, threshold=threshold, existence_threshold=existence_threshold)  # mean, gated mask
            gated = r.existence is not None
            agreement = pairwise_agreement(p.probabilities > threshold) if samples > 1 else None
            mean, pred, truth = torch.from_numpy(r.probability), torch.from_numpy(r.mask), s["mask"] >= 0.5
            if r.existence is not None:
                presence.append((r.existence, bool(truth.any())))
            report.update(
                pred[None, None],
                truth[None],
                ids=[s["id"]],
                prompts=[s["prompt"]],
                spacings=[s.get("spacing")],
                agreements=[agreement],
                mask_probabilities=[float(mean[pred].mean()) if pred.any() else None],
                probabilities=[mean.clamp(0.0, 1.0)],  # a mean of K sigmoids may pass 1 by a rounding step
            )
        if bar is not None:
            bar.update(len(items))
    if bar is not None:
        bar.close()
    result = report.compute()
    result["seed"] = seed
    result["sampling_passes"] = samples
    result["pass_seeds"] = [seed + k for k in range(samples)]
    result["threshold"] = threshold
    result["window_overlap"] = window_overlap  # None: whole images resized to the model's input
    result["existence_threshold"] = existence_threshold if gated else None  # None: the model has no existence head
    result["existence"] = existence_summary(presence, existence_threshold) if gated else None
    with_target = [x["dice"] for x in result["samples"] if not x["target_empty"]]
    result["dice_with_target"] = _mean(with_target)  # Dice on the images that hold their target
    return result
