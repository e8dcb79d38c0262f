"""MegaDepth hourglass: exact layout of the released checkpoint, shapes, errors, width variant, gradients."""


import pytest
import torch

from invrender_core.nets.depth import MegaDepthHourglass, add_dataparallel, strip_dataparallel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MegaDepthHourglass()


def test_state_dict_equals_released_layout(model, released_layout):
    layout = released_layout
    mine = {k: list(v.shape) for k, v in add_dataparallel(model.state_dict()).items()}
    assert len(layout) == 624
    assert set(mine) - set(layout) == set()
    assert set(layout) - set(mine) == set()
    assert mine == layout
    assert not any(k.endswith("num_batches_tracked") for k in mine)


def test_random_released_dict_loads_strictly(released_layout):
    model = MegaDepthHourglass()  # not the shared fixture: random positive weights would overflow its forward
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.rand(shape, generator=gen) + 0.5 for k, shape in released_layout.items()}
    result = model.load_state_dict(strip_dataparallel(state), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.state_dict()["0.weight"], state["module.0.weight"])
    # Re-saved copies with BatchNorm counters are tolerated (the counter is dropped).
    with_counter = strip_dataparallel(state) | {"1.num_batches_tracked": torch.tensor(7)}
    model.load_state_dict(with_counter, strict=True)


def test_strip_and_add_dataparallel_are_inverse():
    state = {"module.0.weight": torch.zeros(1), "module.4.bias": torch.ones(1)}
    assert list(strip_dataparallel(state)) == ["0.weight", "4.bias"]
    assert add_dataparallel(strip_dataparallel(state)).keys() == state.keys()
    assert strip_dataparallel(strip_dataparallel(state)).keys() == strip_dataparallel(state).keys()


def test_forward_shape_and_finite(model):
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 1, 64, 96)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1, 3, 60, 96), (1, 3, 64, 90), (1, 4, 64, 96), (3, 64, 96)])
def test_bad_input_shape_raises_naming_it(model, shape):
    with pytest.raises(ValueError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        model(torch.rand(*shape))


def test_small_width_runs_with_far_fewer_parameters(model):
    small = MegaDepthHourglass(width=0.25)
    n_full = sum(p.numel() for p in model.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < n_full / 10
    assert small(torch.rand(2, 3, 32, 48)).shape == (2, 1, 32, 48)
    # Same module tree (names), only the channel counts differ.
    assert small.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="width"):
        MegaDepthHourglass(width=0)


def test_gradients_reach_the_first_conv():
    torch.manual_seed(0)
    net = MegaDepthHourglass(width=0.25).train()
    net(torch.rand(2, 3, 32, 32)).sum().backward()
    grad = net[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
