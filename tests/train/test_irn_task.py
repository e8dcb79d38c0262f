"""IRNTask: the self-supervised objective on a tiny analytic multiview world, trained for a few steps."""

import numpy as np
import pytest
import torch

from invrender_core.train.irn_task import IRNTask
from invrender_core.train.synthetic import make_dataset
from invrender_core.train.trainer import Trainer, seed_everything

TERMS = {"rerender", "normal_angular", "normal_gradient", "albedo_consistency", "cross_render", "albedo_smoothness",
         "illumination_prior", "shadow_consistency", "shadow_prior", "shadow_sparsity",
         "shading_smoothness", "shadow_ratio", "total"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("irn"), scenes=2, views=3, w=64, h=48, heldout=1)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def task(root, **kw):
    seed_everything(0)
    return IRNTask(str(root), width=1 / 16, eval_views=3, **kw)


def test_losses_are_finite_and_total_is_the_weighted_sum(world):
    t = task(world)
    batch = torch.utils.data.default_collate([t.make_dataset()[k] for k in range(2)])
    with torch.no_grad():
        terms = t.compute_losses(t.model, batch)
    assert set(terms) == TERMS
    assert all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())
    w = t.weights
    expected = sum(getattr(w, k) * terms[k] for k in TERMS - {"total"})
    assert float(terms["total"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(terms["albedo_consistency"]) > 0 and float(terms["cross_render"]) > 0  # the views overlap


def test_two_light_pairs_trade_shadow_consistency_for_the_shadow_ratio_and_keep_the_albedo_terms(tmp_path):
    root = make_dataset(tmp_path / "two_light", scenes=1, views=2, w=64, h=48, heldout=0, second_light=True)
    t = task(root, second_light=1.0, loss_weights={"shadow_sparsity": 0.3})
    assert t.weights.shadow_sparsity == 0.3 and t.weights.rerender == 1.0
    with pytest.raises(ValueError, match="unknown loss terms"):
        task(root, loss_weights={"shadow_sparse": 0.3})
    batch = torch.utils.data.default_collate([t.make_dataset()[k] for k in range(2)])
    assert batch["same_light"].tolist() == [0.0, 0.0]
    with torch.no_grad():
        terms = t.compute_losses(t.model, batch)
        assert float(terms["shadow_consistency"]) == 0.0  # shadows move with the light
        assert float(terms["albedo_consistency"]) > 0 and float(terms["cross_render"]) > 0
        assert float(terms["shadow_ratio"]) > 0  # the ratio of the two photos is for shadows and shading
        batch["same_light"] = torch.ones(2)
        terms = t.compute_losses(t.model, batch)
        assert float(terms["shadow_consistency"]) > 0 and float(terms["shadow_ratio"]) == 0.0


def test_gradients_reach_every_decoder(world):
    t = task(world)
    batch = torch.utils.data.default_collate([t.make_dataset()[0]])
    t.compute_losses(t.model, batch)["total"].backward()
    for name in ("albedo_decoder", "normal_decoder", "shadow_decoder", "encoder"):
        grads = [p.grad for n, p in t.model.named_parameters() if n.startswith(name)]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name


def test_training_lowers_the_objective_and_the_normal_error(world, tmp_path):
    t = task(world)
    before = t.evaluate(t.model.eval())
    t.model.train()
    summary = Trainer(t, tmp_path / "run", device="cpu", batch_size=2, lr=3e-3, steps=40, seed=0, log_every=40,
                      checkpoint_every=1000, progress=False).fit()
    after = t.evaluate(t.model.eval())
    rows = np.genfromtxt(tmp_path / "run" / "log.csv", delimiter=",", names=True)
    assert summary["step"] == 40
    assert after["normal_deg"] < before["normal_deg"] - 5  # MVS normals supervise the normal decoder
    assert np.isfinite(rows["total"]).all()
