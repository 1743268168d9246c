"""LiteMedSAM outlining given boxes: the "true box" upper bound and the "find, then outline" refinement.

Used by ``crossval.py`` (models ``lite-box``, ``lite-box-crop``, ``lite-refine`` and ``lite-refine-whole``).
LiteMedSAM is its TinyViT encoder (:class:`~boltzformer.model.backbones.tinyvit.TinyViTBackbone`, the ``lite`` preset's
backbone) and SAM's box-prompted decoder (:mod:`boltzformer.model.sam_decoder`), both loaded strictly
from ``lite_medsam.pth``. Boxes are the bounding boxes of connected components (8-connected) of a mask:
the ground truth's (upper bound: what LiteMedSAM outlines when the target is found perfectly), or a
trained model's prediction (refinement). Two ways to outline:

- ``whole``: the image padded to a square and resized to 256 (as LiteMedSAM's own preprocessing), one
  encoder pass per image, every box decoded on it;
- ``crop``: a square around each box, of side max(``min_crop``, 2 x the box's longest side) pixels of
  the original image (zero outside it), resized to 256: one encoder pass per box, more pixels per target.

Each box's logits go back to the image's grid; the mask is the union (max of the logits > 0). An image
without boxes gets an empty mask. Scores use :class:`boltzformer.evaluate.report.SegmentationReport`,
as ``evaluate_model`` does, so the numbers sit beside the trained models' rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from boltzformer.evaluate.report import SegmentationReport
from boltzformer.io.transforms import from_model_output, to_model_input
from boltzformer.model.backbones.tinyvit import TinyViTBackbone
from boltzformer.model.sam_decoder import SAMBoxDecoder, load_lite_medsam_box_decoder

SIZE = 256  # LiteMedSAM's input side


@dataclass
class LiteMedSAM:
    """LiteMedSAM's encoder and box decoder, both strictly loaded from ``lite_medsam.pth``."""

    encoder: TinyViTBackbone
    decoder: SAMBoxDecoder

    @classmethod
    def load(cls, path: Path) -> "LiteMedSAM":
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder = TinyViTBackbone()
        encoder.load_state_dict({k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")},
                                strict=True)
        return cls(encoder.eval(), load_lite_medsam_box_decoder(path))

    @torch.no_grad()
    def outline(self, square: Tensor, boxes: Tensor) -> Tensor:
        """square (3, 256, 256) 0-255; boxes (N, 4) x0, y0, x1, y1 in its pixels -> logits (N, 256, 256)."""
        emb = self.encoder.forward_neck(square[None] / 255.0)  # 1x256x64x64
        logits, _ = self.decoder(emb.expand(len(boxes), -1, -1, -1), boxes)
        return logits[:, 0]


def component_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (r0, c0, r1, c1), inclusive, of the 8-connected components of a 2-D boolean mask."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    return [(s[0].start, s[1].start, s[0].stop - 1, s[1].stop - 1) for s in ndimage.find_objects(labels) if s is not None]


def _to_square_box(box: tuple[int, int, int, int], scale: float, off_r: float = 0.0, off_c: float = 0.0) -> list[float]:
    """Inclusive pixel box (r0, c0, r1, c1) -> x0, y0, x1, y1 in a grid scaled by ``scale`` after shifting by the offsets."""
    r0, c0, r1, c1 = box
    x0, y0 = (c0 - off_c) * scale, (r0 - off_r) * scale
    x1, y1 = (c1 + 1 - off_c) * scale - 1, (r1 + 1 - off_r) * scale - 1
    return [x0, y0, max(x0, x1), max(y0, y1)]


def outline_whole(sam: LiteMedSAM, image: Tensor, boxes: list[tuple[int, int, int, int]]) -> Tensor:
    """image (3, H, W) 0-255, boxes in its pixels -> (H, W) logits (max over boxes)."""
    square, geom = to_model_input(image, SIZE)
    scale = SIZE / geom.side
    logits = sam.outline(square, torch.tensor([_to_square_box(b, scale) for b in boxes]))
    return from_model_output(logits, geom).amax(0)


def outline_crops(sam: LiteMedSAM, image: Tensor, boxes: list[tuple[int, int, int, int]], min_crop: int = 64) -> Tensor:
    """image (3, H, W) 0-255, boxes in its pixels -> (H, W) logits, each box outlined in its own zoomed crop."""
    _, H, W = image.shape
    out = torch.full((H, W), -1e4)
    for box in boxes:
        r0, c0, r1, c1 = box
        side = min(max(min_crop, 2 * max(r1 - r0 + 1, c1 - c0 + 1)), max(H, W, min_crop))
        top, left = (r0 + r1 + 1 - side) // 2, (c0 + c1 + 1 - side) // 2  # crop centred on the box
        crop = _crop(image, top, left, side)  # 3 x side x side, zeros where it leaves the image
        square = F.interpolate(crop[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=side > SIZE)[0]
        logits = sam.outline(square, torch.tensor([_to_square_box(box, SIZE / side, top, left)]))  # 1x256x256
        back = F.interpolate(logits[None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]  # side x side
        rs, cs = slice(max(0, top), min(H, top + side)), slice(max(0, left), min(W, left + side))
        out[rs, cs] = torch.maximum(out[rs, cs], back[rs.start - top : rs.stop - top, cs.start - left : cs.stop - left])
    return out


def _crop(image: Tensor, top: int, left: int, side: int) -> Tensor:
    """(3, side, side) window of ``image`` at (top, left), zeros outside the image."""
    _, H, W = image.shape
    out = image.new_zeros(3, side, side)
    rs, cs = slice(max(0, top), min(H, top + side)), slice(max(0, left), min(W, left + side))
    out[:, rs.start - top : rs.stop - top, cs.start - left : cs.stop - left] = image[:, rs, cs]
    return out


def score(dataset, masks_for, *, boxes_from=None, lesion_iou: float | None = None) -> dict:
    """Score ``masks_for(item, boxes) -> (H, W) bool`` on every item of ``dataset`` with the evaluator's report.

    ``boxes_from(item)``: the boxes to outline (default: the ground truth's components); ``lesion_iou``: the
    report's lesion match (None: any overlap)."""
    report = SegmentationReport(lesion_iou=lesion_iou)
    for i in range(len(dataset)):
        s = dataset[i]
        target = s["mask"][0] >= 0.5
        boxes = component_boxes(target.numpy()) if boxes_from is None else boxes_from(s)
        pred = masks_for(s, boxes) if boxes else torch.zeros_like(target)
        report.update(pred[None, None], target[None, None], ids=[s["id"]], prompts=[s["prompt"]], spacings=[s.get("spacing")])
    return report.compute()


def model_masks(model, dataset, *, seed: int = 0, window_overlap: float | None = None, threshold: float = 0.5,
                existence_threshold: float = 0.5) -> list[Tensor]:
    """A trained model's (H, W) boolean masks, one image at a time, as ``evaluate_model`` makes them (same
    seed, threshold and existence gate; the encoder runs, no feature cache)."""
    from boltzformer.evaluate.runner import predict_passes

    model.eval()
    generator = torch.Generator(device=model.device).manual_seed(seed)  # carried over the images, as evaluate_model
    masks = []
    for i in range(len(dataset)):
        s = dataset[i]
        with torch.no_grad():
            probs, existence = predict_passes(model, [s["image"]], [s["prompt"]], image_size=model.config.image_size,
                                              generators=[generator], window_overlap=window_overlap)
        pred = probs[0].mean(0) > threshold
        if existence is not None and float(existence[0].mean()) < existence_threshold:
            pred = torch.zeros_like(pred)
        masks.append(pred)
    return masks


def refine(sam: LiteMedSAM, dataset, masks: list[Tensor], *, outline: str = "crop", min_crop: int = 64,
           min_area: int = 0, lesion_iou: float | None = None) -> dict:
    """"Find, then outline": each component of a model's mask (of at least ``min_area`` pixels) gives a box that
    LiteMedSAM outlines (``outline`` "crop" or "whole"); the union of the outlines replaces the model's mask."""
    by_id = {dataset[i]["id"]: m for i, m in enumerate(masks)}

    def boxes_from(s):
        m = by_id[s["id"]].numpy()
        labels, _ = ndimage.label(m, structure=np.ones((3, 3), dtype=int))
        areas = np.bincount(labels.ravel())
        return [b for k, b in enumerate(component_boxes(m), start=1) if areas[k] >= min_area]

    def outline_fn(s, boxes):
        if outline == "crop":
            return outline_crops(sam, s["image"], boxes, min_crop=min_crop) > 0
        return outline_whole(sam, s["image"], boxes) > 0

    return score(dataset, outline_fn, boxes_from=boxes_from, lesion_iou=lesion_iou)


def score_masks(dataset, masks: list[Tensor], *, lesion_iou: float | None = None) -> dict:
    """The evaluator's report of ready-made (H, W) boolean masks, one per item."""
    it = iter(masks)
    return score(dataset, lambda s, boxes: next(it), boxes_from=lambda s: [(0, 0, 0, 0)], lesion_iou=lesion_iou)
