"""Normalize refuses per-channel statistics of different lengths, and non-finite ones, when it is made."""
import numpy as np
import pytest

from bitnet.data.transforms import Normalize


def test_mean_and_std_of_different_lengths_are_refused_up_front():
    with pytest.raises(ValueError, match=r"got 3 means \[0.5, 0.1.*\] and 2 stds \[0.5, 0.2.*\]; give both per channel"):
        Normalize([.5, .1, .1], [.5, .2])


@pytest.mark.parametrize("mean, std", [(np.nan, 1.0), ([0.1, np.inf], [1.0, 1.0]), (0.0, np.inf)])
def test_non_finite_statistics_are_refused(mean, std):
    with pytest.raises(ValueError, match="must be finite"):
        Normalize(mean, std)


def test_per_channel_and_scalar_mix_still_works():
    x = np.full((2, 3, 2, 2), 255, np.uint8)
    out = Normalize([0.5, 0.25, 0.0], 0.5)(x)
    np.testing.assert_array_equal(out[0, :, 0, 0], np.float32([1.0, 1.5, 2.0]))
