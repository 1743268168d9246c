"""Tests of boltzformer.sizes: the one definition of the size buckets, as the synthetic benchmark and the
evaluation see it (both re-export it)."""

import pytest

import boltzformer.data.synthetic as synthetic
import boltzformer.evaluate as evaluate
from boltzformer.sizes import BUCKET_RANGES, SIZE_BUCKETS, size_bucket


@pytest.mark.parametrize(
    "area, bucket",
    [(0.0, "tiny"), (0.000999, "tiny"), (0.001, "small"), (0.00999, "small"), (0.01, "large"), (1.0, "large")],
)
def test_size_bucket_boundaries(area, bucket):
    assert size_bucket(area) == bucket


@pytest.mark.parametrize("area", [-0.1, 1.5, float("nan"), float("inf")])
def test_size_bucket_rejects(area):
    with pytest.raises(ValueError, match="area_fraction"):
        size_bucket(area)


def test_ranges_agree_with_the_function_and_one_definition_is_shared():
    assert tuple(BUCKET_RANGES) == SIZE_BUCKETS == ("tiny", "small", "large")
    for bucket, (lo, hi) in BUCKET_RANGES.items():
        assert size_bucket(lo) == bucket and (hi == 1.0 or size_bucket(hi) != bucket)
    assert synthetic.size_bucket is evaluate.size_bucket is size_bucket
    assert synthetic.SIZE_BUCKETS is evaluate.SIZE_BUCKETS is SIZE_BUCKETS
