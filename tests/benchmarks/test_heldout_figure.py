"""benchmarks/heldout_figure.py: the zoom stays inside the image and false positives are the predicted
components that touch no target pixel."""

from __future__ import annotations


import numpy as np
import pytest
from tests.benchmarks import load_benchmark



@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("scipy")
    return load_benchmark('heldout_figure')


def test_zoom_keeps_the_crop_inside_the_image_and_enlarges_it(hf):
    a = np.arange(100 * 80).reshape(100, 80)
    z = hf._zoom(a, (2, 78), side=20, scale=3)  # near the top-right corner: shifted inside
    assert z.shape == (60, 60)
    assert z[0, 0] == a[0, 60] and z[-1, -1] == a[19, 79]
    assert np.array_equal(z[::3, ::3], a[0:20, 60:80])


def test_false_positives_count_components_away_from_the_truth(hf):
    truth = np.zeros((20, 20), bool)
    truth[2:5, 2:5] = True
    pred = np.zeros_like(truth)
    pred[3:6, 3:6] = True  # overlaps the truth: a hit
    pred[10, 10] = True  # alone: one false positive
    pred[15:17, 15] = True  # another
    pred[11, 11] = True  # 8-connected to (10, 10): the same component
    assert hf._false_positives(pred, truth) == 2
