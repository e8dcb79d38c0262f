"""nets/face_corr.py: shapes, output ranges, the Laplace loss, learning, and the registry layout."""

import math

import numpy as np
import pytest
import torch

from invrender_core.nets import face_corr, weights


def test_shapes_ranges_and_input_checks():
    net = face_corr.FaceCorrespondenceNet(width=4, size=32).eval()
    out = net(torch.rand(2, 3, 32, 48))
    assert out.shape == (2, face_corr.OUTPUT_CHANNELS, 32, 48)
    assert out[:, :3].abs().max() <= face_corr.TEMPLATE_LIMIT
    assert out[:, 4].min() >= face_corr.LOG_SCALE_RANGE[0] and out[:, 4].max() <= face_corr.LOG_SCALE_RANGE[1]
    pred = net.predict(np.zeros((3, 32, 32, 3), np.uint8))
    assert pred["template"].shape == (3, 32, 32, 3) and pred["mask"].shape == (3, 32, 32)
    assert np.all((pred["confidence"] >= 0) & (pred["confidence"] <= pred["mask"] + 1e-7))
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.rand(1, 3, 20, 32))
    with pytest.raises(ValueError, match=r"\(N, S, S, 3\)"):
        net.predict(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="multiple of 4"):
        face_corr.FaceCorrespondenceNet(width=6)


def test_network_still_trains_after_predict():
    """predict converts the weights to channels-last; done in inference mode, the next training step failed."""
    torch.manual_seed(0)
    net = face_corr.FaceCorrespondenceNet(width=4, size=32)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    net.eval().predict(np.zeros((1, 32, 32, 3), np.uint8))  # as the trainer's evaluation does
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.rand(2, 3, 32, 32)).square().mean().backward()
    optimiser.step()
    assert all(not p.is_inference() for p in net.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


def test_confidence_is_half_at_the_confident_scale():
    out = torch.zeros(1, 5, 1, 1)
    out[0, 3] = 20.0  # certainly face
    out[0, 4] = math.log(face_corr.CONFIDENT_SCALE)
    _, mask, confidence = face_corr.split_output(out)
    assert float(mask) == pytest.approx(1.0) and float(confidence) == pytest.approx(0.5, abs=1e-6)


def test_laplace_loss_is_minimised_by_the_true_error_scale():
    """For a fixed template error e, |e| / b + 3 log b is smallest at b = |e| / 3 (d/db = 0)."""
    template = torch.zeros(1, 3, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    losses = []
    for log_b in np.linspace(-5, 0, 51):
        out = torch.zeros(1, 5, 4, 4)
        out[:, :3] = 0.1  # L1 error over xyz = 0.3
        out[:, 4] = float(log_b)
        losses.append(float(face_corr.correspondence_loss(out, template, mask)["nll"]))
    assert np.exp(np.linspace(-5, 0, 51)[int(np.argmin(losses))]) == pytest.approx(0.1, rel=0.12)
    with pytest.raises(ValueError, match="B, 5"):
        face_corr.correspondence_loss(torch.zeros(1, 4, 4, 4), template, mask)


def test_network_learns_a_coordinate_map_with_gradients_everywhere():
    torch.manual_seed(0)
    net = face_corr.FaceCorrespondenceNet(width=4, size=16)
    image = torch.rand(4, 3, 16, 16)
    template = image * 0.5  # a per-pixel function of the input
    mask = (image[:, :1] > 0.3).float()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    first = None
    for _ in range(40):
        losses = face_corr.correspondence_loss(net(image), template, mask)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        if first is None:
            first = float(losses["l1"].detach())
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
    assert float(losses["l1"].detach()) < 0.5 * first


def test_registry_architecture_round_trip():
    net = face_corr.FaceCorrespondenceNet(width=8, size=64)
    arch, config = weights.infer_architecture(net.state_dict())
    assert arch == "face_corr" and config == {"width": 8}
    rebuilt = weights.build_model("face_corr", {"width": 8, "size": 64})
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    with pytest.raises(ValueError, match="unknown keys"):
        weights.build_model("face_corr", {"depth": 3})
