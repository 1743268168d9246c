"""Connected components as lesions."""

from __future__ import annotations

import numpy as np
import pytest

from boltzformer.predict.lesions import label_components, lesions


def test_components_8_connected_in_raster_order():
    m = np.zeros((8, 10), bool)
    m[1, 1] = m[2, 2] = True  # diagonal neighbours: one component
    m[0, 6:9] = True  # a second one, starting earlier in raster order
    m[6:8, 0:3] = True  # a third, 6 pixels
    labels, n = label_components(m)
    assert n == 3
    assert labels[0, 6] == 1 and labels[1, 1] == 2 == labels[2, 2] and labels[7, 2] == 3
    assert (labels > 0).sum() == m.sum()


def test_a_u_shape_is_one_component():
    m = np.zeros((20, 20), bool)
    m[2:18, 2] = m[2:18, 17] = m[17, 2:18] = True
    _, n = label_components(m)
    assert n == 1


def test_lesion_records():
    m = np.zeros((10, 10), bool)
    m[2:4, 2:5] = True  # 6 px
    m[8, 8] = True  # 1 px
    prob = np.where(m, 0.9, 0.1)
    prob[8, 8], prob[3, 4] = 0.6, 0.95
    found = lesions(m, probability=prob, spacing=(0.5, 0.7))
    assert [x.area_px for x in found] == [6, 1]
    big = found[0]
    assert big.bbox == (2, 2, 4, 5) and big.centroid == (2.5, 3.0)
    assert big.area_mm2 == pytest.approx(6 * 0.35) and big.mean_probability == pytest.approx((5 * 0.9 + 0.95) / 6)
    assert big.max_probability == pytest.approx(0.95)
    assert found[1].mean_probability == found[1].max_probability == pytest.approx(0.6)
    assert lesions(np.zeros((4, 4), bool)) == []
    with pytest.raises(ValueError, match="probability"):
        lesions(m, probability=prob[:5])


def test_scipy_and_the_torch_fallback_label_alike(monkeypatch):
    import sys

    from boltzformer.predict.lesions import label_components

    rng = np.random.default_rng(0)
    masks = [rng.random((40, 55)) > p for p in (0.4, 0.6, 0.8)]
    with_scipy = [label_components(m) for m in masks]
    monkeypatch.setitem(sys.modules, "scipy", None)  # "from scipy import ndimage" now raises ImportError
    for m, (labels, n) in zip(masks, with_scipy):
        fb_labels, fb_n = label_components(m)
        assert n == fb_n > 1 and np.array_equal(labels, fb_labels)
