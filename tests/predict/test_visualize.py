"""boltzformer.predict.visualize: the overlay, the three-tile panel and the one heat map, at known pixels."""

from __future__ import annotations

import numpy as np
import pytest

from boltzformer.predict.visualize import GREEN, RED, heat_colors, overlay, panel, uncertainty_image


def _square_mask(shape=(10, 12)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[2:7, 3:8] = True  # 5x5: border 16 pixels, inside 3x3
    return mask


def test_overlay_tints_the_inside_and_outlines_the_edge():
    image = np.full((10, 12), 100, np.uint8)
    out = np.asarray(overlay(image, _square_mask(), alpha=0.5))
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [100, 100, 100]  # outside: the grey image as RGB
    assert out[4, 5].tolist() == [177, 70, 70]  # inside: 0.5 * 100 + 0.5 * (255, 40, 40)
    assert out[2, 3].tolist() == list(RED) and out[6, 7].tolist() == list(RED)  # edge: the colour itself
    assert (out == np.array(RED)).all(-1).sum() == 16  # the 5x5 square's border, not its 3x3 inside


def test_overlay_rescales_values_outside_0_255_and_keeps_rgb():
    image = np.zeros((4, 4), np.float32)
    image[0, 0] = 4000.0
    out = np.asarray(overlay(image, np.zeros((4, 4), bool)))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [0, 0, 0]
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 200
    assert np.asarray(overlay(rgb, np.zeros((4, 4), bool)))[2, 2].tolist() == [0, 200, 0]


def test_overlay_label_draws_a_black_caption_bar():
    out = np.asarray(overlay(np.full((20, 40), 200, np.uint8), np.zeros((20, 40), bool), label="dot"))
    assert out[12, 39].tolist() == [0, 0, 0] and out[19, 0].tolist() == [200, 200, 200]


def test_panel_is_image_truth_prediction_side_by_side_under_a_caption():
    image = np.full((10, 12), 100, np.uint8)
    truth, pred = _square_mask(), np.zeros((10, 12), bool)
    pred[0, 0] = True
    out = np.asarray(panel(image, truth, pred, "caption"))
    assert out.shape == (10 + 14, 3 * 12, 3) and out.dtype == np.uint8
    tile = lambda i: out[14:, 12 * i : 12 * (i + 1)]  # noqa: E731
    assert (tile(0) == 100).all()  # the image alone
    assert tile(1)[2, 3].tolist() == list(GREEN) and tile(1)[0, 0].tolist() == [100, 100, 100]
    assert tile(2)[0, 0].tolist() == list(RED) and tile(2)[2, 3].tolist() == [100, 100, 100]


def test_heat_colors_black_red_yellow_white_clipped():
    values = np.array([[0.0, 1 / 3, 2 / 3, 1.0, 1.5, -0.5]], np.float32)
    colors = heat_colors(values)
    assert colors.shape == (1, 6, 3) and colors.dtype == np.float32
    expected = [[0, 0, 0], [255, 0, 0], [255, 255, 0], [255, 255, 255], [255, 255, 255], [0, 0, 0]]
    np.testing.assert_allclose(colors[0], expected, atol=1e-3)
    half = heat_colors(np.array([0.5]))  # float64 in, float64 out
    assert half.dtype == np.float64 and half[0].tolist() == pytest.approx([255, 127.5, 0])


def test_uncertainty_image_heat_over_the_dimmed_image():
    grey = np.full((3, 4), 100, np.uint8)
    std = np.zeros((3, 4), np.float32)
    std[1, 2] = 0.5  # the top of the scale: white
    out = np.asarray(uncertainty_image(grey, std))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [35, 35, 35] and out[1, 2].tolist() == [200, 200, 200]  # 0.35 * 100 (+ 0.65 * 255)
