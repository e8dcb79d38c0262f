"""sRGB transfer functions against IEC 61966-2-1 values."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from invrender_core.io import linear_to_srgb, srgb_to_linear


@pytest.mark.parametrize(
    ("encoded", "linear"),
    [
        (0.0, 0.0),
        (1.0, 1.0),
        (0.02, 0.02 / 12.92),  # linear toe
        (0.5, 0.214041140),  # ((0.5 + 0.055) / 1.055) ** 2.4
        (0.735356983, 0.5),
        (0.461356129, 0.18),  # middle grey
    ],
)
def test_known_points(encoded, linear):
    assert srgb_to_linear(np.float64(encoded)) == pytest.approx(linear, abs=1e-9)
    assert linear_to_srgb(np.float64(linear)) == pytest.approx(encoded, abs=1e-9)


def test_branches_meet_at_threshold():
    # the two pieces of the standard agree at the break point to ~1e-8 (the standard's own rounding)
    below = srgb_to_linear(np.array([0.04045]))[0]
    above = ((0.04045 + 0.055) / 1.055) ** 2.4
    assert abs(below - above) < 1e-7
    assert linear_to_srgb(np.array([0.0031308]))[0] == pytest.approx(0.0031308 * 12.92, abs=1e-7)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(0.0, 1.0)))
def test_round_trip(x):
    # The standard's two pieces do not meet exactly (0.04045 / 12.92 > 0.0031308), so values next to
    # the break points come back off by up to ~3e-8; elsewhere the round trip is exact.
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-7)
    np.testing.assert_allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-7)
    away = x[np.abs(x - 0.04045) > 1e-4]
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(away)), away, rtol=1e-12, atol=1e-15)


def test_break_point():
    assert srgb_to_linear(np.float64(0.04045)) == pytest.approx(0.04045 / 12.92, abs=1e-12)


def test_shape_dtype_monotonic_and_nan():
    x = np.linspace(0.0, 1.0, 24, dtype=np.float32).reshape(2, 3, 4)
    for f in (srgb_to_linear, linear_to_srgb):
        y = f(x)
        assert y.shape == (2, 3, 4) and y.dtype == np.float32
        assert np.all(np.diff(y.ravel()) > 0)
    assert np.isnan(srgb_to_linear(np.array([np.nan]))[0])
    assert srgb_to_linear(np.array([-0.1]))[0] == pytest.approx(-0.1 / 12.92)


def test_integer_input_refused():
    with pytest.raises(ValueError, match="uint8"):
        srgb_to_linear(np.array([0, 128, 255], dtype=np.uint8))
    with pytest.raises(ValueError, match="float"):
        linear_to_srgb(np.array([1, 2]))
