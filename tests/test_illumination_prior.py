"""illumination_prior.py: the packaged natural-illumination model and its use in MAP lighting fits."""

import hashlib
import importlib.resources
import json
import math

import numpy as np
import pytest

from invrender_core import sh
from invrender_core.illumination_prior import IlluminationPrior, normalise


@pytest.fixture(scope="module")
def prior():
    return IlluminationPrior.load()


@pytest.fixture(scope="module")
def heldout():
    res = importlib.resources.files("invrender_core") / "data" / "illumination_prior.npz"
    with importlib.resources.as_file(res) as p, np.load(p) as z:
        return z["heldout_examples"]


def rotation_x(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def test_loads_with_card(prior):
    assert prior.mean.shape == (27,) and prior.components.shape == (27, 27) and prior.variances.shape == (27,)
    assert prior.frame == "camera" and prior.card["frame"].startswith("camera")
    res = importlib.resources.files("invrender_core") / "data"
    digest = hashlib.sha256((res / "illumination_prior.npz").read_bytes()).hexdigest()
    assert json.loads((res / "illumination_prior.json").read_text())["sha256"] == digest
    assert prior.card["counts"]["skies"] >= 300


def test_components_orthonormal_and_sorted(prior):
    np.testing.assert_allclose(prior.components @ prior.components.T, np.eye(27), atol=1e-10)
    assert np.all(np.diff(prior.variances) <= 0) and np.all(prior.variances >= 0)


def test_mean_is_normalised_daylight(prior):
    mean = prior.mean.reshape(9, 3)
    assert mean[0] @ sh.LUMINANCE == pytest.approx(1.0, abs=1e-9)
    assert mean[1] @ sh.LUMINANCE > 0.1  # camera frame: light comes from above (+y) on average
    assert np.all(mean[0] > 0.5)  # daylight has all three colours (warm: the sun dominates)
    assert mean[6] @ sh.LUMINANCE < 0  # L20 (camera z axis): less light along the view axis than around it


def test_log_prob_prefers_plausible_lighting(prior, heldout):
    plausible = heldout[0] * 5.0  # exposure does not matter
    lp = prior.log_prob(plausible)
    assert lp == pytest.approx(prior.log_prob(heldout[0]))
    from_below = sh.rotation(rotation_x(math.pi)) @ plausible
    green = plausible * [0.2, 1.5, 0.2]
    assert lp > prior.log_prob(from_below) + 10
    assert lp > prior.log_prob(green) + 10
    assert prior.log_prob(-plausible) == -np.inf
    batch = prior.log_prob(heldout)
    assert batch.shape == (len(heldout),) and np.all(batch > prior.log_prob(from_below))
    with pytest.raises(ValueError, match=r"\(9, 3\).*\(27,\)"):
        prior.log_prob(np.zeros(27))


def test_project(prior, heldout):
    L = np.random.default_rng(0).normal(size=(9, 3))
    L[0] = [2.0, 2.0, 2.0]  # positive DC luminance
    np.testing.assert_allclose(prior.project(L), L, atol=1e-10)  # all components
    np.testing.assert_allclose(prior.project(L, 0), prior.mean.reshape(9, 3) * (L[0] @ sh.LUMINANCE), atol=1e-12)
    n = sh._fibonacci_sphere(500)
    errs = [np.mean([np.sqrt(np.mean((sh.shading(n, prior.project(h, k)) - sh.shading(n, h)) ** 2)) for h in heldout])
            for k in (0, 4, 12, 27)]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[2] < 0.1 * errs[0] and errs[3] < 1e-12
    with pytest.raises(ValueError, match="k must be"):
        prior.project(L, 28)
    with pytest.raises(ValueError, match="non-positive"):
        prior.project(-L)


def test_sample_statistics(prior):
    x = prior.sample(20000, rng=1)
    assert x.shape == (20000, 9, 3)
    assert x.reshape(-1, 27).mean(0) == pytest.approx(prior.mean, abs=4 * math.sqrt(prior.variances[0] / 20000))
    np.testing.assert_allclose(x[:, 0] @ sh.LUMINANCE, 1.0, atol=1e-6)  # samples are normalised
    cov = np.cov(x.reshape(-1, 27), rowvar=False)
    np.testing.assert_allclose(prior.components @ cov @ prior.components.T, np.diag(prior.variances),
                               atol=0.05 * prior.variances[0])
    np.testing.assert_array_equal(prior.sample(3, rng=5), prior.sample(3, rng=5))


def test_gaussian(prior):
    mean, precision = prior.gaussian()
    np.testing.assert_allclose(precision, precision.T, atol=1e-6 * np.abs(precision).max())
    assert np.linalg.eigvalsh(precision).min() > 0
    mean2, precision2 = prior.gaussian(scale=2.0)
    np.testing.assert_allclose(mean2, 2 * mean)
    np.testing.assert_allclose(precision2, precision / 4)
    with pytest.raises(ValueError, match="positive"):
        prior.gaussian(scale=0.0)


def test_normalise():
    L = np.zeros((2, 9, 3))
    L[:, 0] = [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]
    Ln, scale = normalise(L * 3)
    np.testing.assert_allclose(scale, [3.0, -3.0])
    assert Ln[0, 0] @ sh.LUMINANCE == pytest.approx(1.0) and np.all(np.isnan(Ln[1]))


def test_constructor_errors(prior):
    with pytest.raises(ValueError, match=r"mean.*\(27,\)"):
        IlluminationPrior(np.zeros(9), prior.components, prior.variances, 1e-4)
    with pytest.raises(ValueError, match=r"variances.*\(27,\)"):
        IlluminationPrior(prior.mean, prior.components, prior.variances[:5], 1e-4)
    with pytest.raises(ValueError, match="variance_floor"):
        IlluminationPrior(prior.mean, prior.components, prior.variances, 0.0)


def test_fit_lighting_with_prior_regularises_narrow_views(prior, heldout):
    """Normals within 35 degrees of the view axis leave most of L unconstrained: the prior fills it in."""
    rng = np.random.default_rng(2)
    L = heldout[2] * 2.5
    n = rng.normal(size=(4000, 3))
    n[:, 2] = np.abs(n[:, 2]) + 2.0
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    n = n[n[:, 2] > math.cos(math.radians(35.0))]
    albedo = np.full(n.shape, 0.5)
    image = albedo * sh.shading(n, L) + 0.01 * rng.normal(size=n.shape)
    lsq = sh.fit_lighting(image, albedo, n)
    map_ = sh.fit_lighting(image, albedo, n, prior=prior)
    sphere = sh._fibonacci_sphere(1000)
    front = sphere[sphere[:, 2] > 0]

    def err(est, normals):
        return np.sqrt(np.mean((sh.shading(normals, est) - sh.shading(normals, L)) ** 2))

    assert err(map_, front) < err(lsq, front)
    assert err(map_, n) < 0.05 * sh.shading(n, L).mean()  # still fits the data
    # a flat wall: no LSQ solution, but the prior gives one that reproduces the wall
    wall = np.broadcast_to([0.0, 0.0, 1.0], (500, 3))
    img = 0.5 * sh.shading(wall, L)
    est = sh.fit_lighting(img, np.full((500, 3), 0.5), wall, prior=prior)
    np.testing.assert_allclose(sh.shading(wall[:1], est), sh.shading(wall[:1], L), rtol=0.01)


def test_clamping_of_realistic_skies_is_bounded(heldout):
    """to_equirect's docstring numbers: clamping negative radiance of real (world-frame) skies."""
    normals = sh._fibonacci_sphere(1000)
    to_world = sh.rotation(sh.CAMERA_TO_WORLD)
    for L in heldout:
        Lw = to_world @ L
        peak = sh.shading(normals, Lw).max()

        def clamp_change(lighting, peak=peak):
            clamped = sh.from_equirect(sh.to_equirect(lighting, 128, 64))
            return np.abs(sh.shading(normals, clamped) - sh.shading(normals, lighting)).max() / peak

        assert clamp_change(Lw) < 0.17
        assert clamp_change(sh.extract_sun(Lw, 0.6)[2]) < 0.06
