"""benchmarks/box_prompt.py's geometry: boxes of components, and boxes mapped into the 256 input (whole image or
zoomed crop) and back, checked with a stand-in for LiteMedSAM that outlines exactly the box it is given."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from tests.benchmarks import load_benchmark



@pytest.fixture(scope="module")
def bp():
    return load_benchmark('box_prompt')


class _BoxSAM:
    """Outlines the box itself: logits +1 inside x0..x1, y0..y1 (inclusive pixel centres), -1 outside."""

    def outline(self, square, boxes):
        assert square.shape == (3, 256, 256)
        yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
        out = []
        for x0, y0, x1, y1 in boxes.tolist():
            inside = (xx >= x0 - 0.5) & (xx <= x1 + 0.5) & (yy >= y0 - 0.5) & (yy <= y1 + 0.5)
            out.append(inside.float() * 2 - 1)
        return torch.stack(out)


def test_component_boxes(bp):
    m = np.zeros((20, 30), bool)
    m[2:5, 3:7] = True
    m[10, 20] = True
    m[11, 21] = True  # diagonal neighbour: same 8-connected component
    assert bp.component_boxes(m) == [(2, 3, 4, 6), (10, 20, 11, 21)]
    assert bp.component_boxes(np.zeros((4, 4), bool)) == []


@pytest.mark.parametrize("shape", [(512, 512), (256, 256), (300, 200)])
def test_whole_and_crop_map_boxes_back(bp, shape):
    H, W = shape
    image = torch.rand(3, H, W) * 255
    boxes = [(40, 50, 71, 89), (0, 0, 9, 5), (H - 12, W - 8, H - 1, W - 1)]  # one box at each corner's edge
    want = torch.zeros(H, W, dtype=torch.bool)
    for r0, c0, r1, c1 in boxes:
        want[r0 : r1 + 1, c0 : c1 + 1] = True
    for got in (bp.outline_whole(_BoxSAM(), image, boxes) > 0, bp.outline_crops(_BoxSAM(), image, boxes, min_crop=64) > 0):
        assert got.shape == (H, W)
        iou = (got & want).sum() / (got | want).sum()
        assert iou > 0.9, float(iou)
