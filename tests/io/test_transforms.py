"""Input geometry: padding to a square (at the corner or centred, as BiomedParse v2) and back."""

from __future__ import annotations

import pytest
import torch

from boltzformer.io.transforms import from_model_output, resize_mask_to_input, to_model_input


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("shape", [(30, 50), (50, 31), (50, 50)])
def test_padding_is_undone_exactly_and_centred_padding_is_equal_on_both_sides(shape, center):
    H, W = shape
    image = torch.rand(3, H, W) * 255 + 1  # no zeros: the padding is the only zero
    x, geom = to_model_input(image, 50, center=center)
    assert x.shape == (3, 50, 50)
    rows, cols = (x[0] != 0).any(1).nonzero()[:, 0], (x[0] != 0).any(0).nonzero()[:, 0]
    top, left = int(rows[0]), int(cols[0])
    assert (top, left) == (geom.top, geom.left)
    if center:  # BiomedParse v2's pad_and_resize: (side - n) // 2 before, the rest after
        assert (top, left) == ((50 - H) // 2, (50 - W) // 2)
        assert (49 - int(rows[-1])) - top in (0, 1) and (49 - int(cols[-1])) - left in (0, 1)
    else:
        assert (top, left) == (0, 0)
    torch.testing.assert_close(from_model_output(x, geom), image)  # same side: no resizing
    mask = (torch.rand(1, H, W) > 0.5).float()
    torch.testing.assert_close(from_model_output(resize_mask_to_input(mask, geom), geom), mask)
