"""The albedo colour gauge: calibrated from the photos alone, it makes the network's light the target's colour,
whatever gauge the network started in."""

import numpy as np
import pytest
import torch

from invrender_core.illumination_prior import IlluminationPrior
from invrender_core.nets.irn import InverseRenderNet
from invrender_core.train.colour_gauge import calibrate, median_colour, shading_ratios, training_views
from invrender_core.train.synthetic import make_dataset


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("gauge"), scenes=2, views=3, w=64, h=48, heldout=0)
    found = training_views(root)
    assert len(found) == 6 and found[0]["image"].shape == (48, 64, 3) and found[0]["sky"].shape == (48, 64)
    return found


def network(gain):
    torch.manual_seed(0)  # the same weights for every gain; no prior, so the light solve is linear per channel
    return InverseRenderNet(width=0.0625, albedo_gain=gain).eval()


def test_calibration_makes_the_light_the_targets_colour_in_any_starting_gauge(views):
    target = IlluminationPrior.load().mean_lighting
    gains = []
    for start in ([1.0, 1.0, 1.0], [0.3, 1.0, 0.7]):
        net = network(start)
        before = median_colour(shading_ratios(net, views, target))
        gain, colour = calibrate(net, views, target)
        np.testing.assert_allclose(colour, before)
        assert gain.max() == pytest.approx(1.0) and (gain > 0).all()
        np.testing.assert_allclose(median_colour(shading_ratios(net, views, target)), 1.0, atol=1e-4)
        gains.append(gain)
    assert np.abs(np.log(before)).max() > 0.05  # the random net's light was not the target's colour
    np.testing.assert_allclose(gains[0], gains[1], rtol=1e-4)  # the gauge it started in does not matter


def test_calibration_needs_positive_shading(views):
    with pytest.raises(ValueError, match="nothing to calibrate"):
        median_colour(np.array([[1.0, -1.0, 1.0]]))
