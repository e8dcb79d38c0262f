"""Held-out evaluation: exact predictions score zero error; the whole pipeline runs over a split."""

import numpy as np
import pytest
import torch

from invrender_core.camera import Camera
from invrender_core.nets import weights
from invrender_core.train.datasets import EvalViews
from invrender_core.train.evaluate import evaluate, predict_pipeline, score_view
from invrender_core.train.synthetic import make_dataset, register_untrained_networks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("eval"), scenes=1, views=2, w=64, h=48, heldout=1)


def test_ground_truth_predictions_score_zero_error(world):
    view = EvalViews(world, "heldout")[0]
    truth = {"albedo": view["gt_albedo"], "normals": view["gt_normal"], "shadow": view["gt_shadow"],
             "lighting": np.eye(9, 3), "depth": np.where(view["gt_depth"] > 0, view["gt_depth"], 1.0),
             "depth_fused": view["gt_depth"]}
    row = score_view(view, truth)
    assert row["normal_deg"] == pytest.approx(0.0, abs=0.1)  # float16 storage of the normals
    assert row["albedo_simse"] == pytest.approx(0.0, abs=1e-6)
    assert row["albedo_colour_err"] == pytest.approx(0.0, abs=1e-6)
    assert row["depth_silog"] == pytest.approx(0.0, abs=1e-6) and row["fused_silog"] == pytest.approx(0.0, abs=1e-6)
    assert row["normal_deg_flat"] > 10 and row["depth_silog_constant"] > 0.05  # the baselines are not trivial
    # One colour everywhere: after the best scale per channel, the error is the true albedo's variance.
    ground = ~view["sky_mask"] & (view["gt_depth"] > 0)
    expected = view["gt_albedo"].astype(np.float64)[ground].var(0).mean()
    assert row["albedo_simse_constant"] == pytest.approx(expected, rel=1e-9) and expected > 0.001
    # Normals of the exact depth: right on smooth surfaces, off at this 64 x 48 world's silhouettes only.
    assert row["fused_normal_deg"] < 0.5 * row["normal_deg_flat"]
    # Away from the silhouettes the exact depth's normals are the true ones (up to float16 and differencing).
    assert row["depth_silog_interior"] == pytest.approx(0.0, abs=1e-6)
    assert row["fused_normal_deg_interior"] < 1.0 < row["fused_normal_deg"]


def test_pipeline_evaluation_over_a_split(world, tmp_path):
    torch.set_num_threads(1)
    folder = register_untrained_networks(tmp_path / "weights")
    irn = weights.load_named("irn-test", weights_dir=folder)
    depth = weights.load_named("depth-test", weights_dir=folder)
    result = evaluate(world, irn, depth)
    assert result["views"] == 2 and len(result["per_view"]) == 2
    for key in ("normal_deg", "albedo_simse", "depth_silog", "fused_silog", "lighting_err"):
        assert np.isfinite(result["mean"][key]), key
    only_irn = evaluate(world, irn, max_views=1)
    assert only_irn["views"] == 1 and "depth_silog" not in only_irn["mean"]


def test_command_line_albedo_weight_changes_the_albedo_alone(world, tmp_path):
    import json

    from invrender_core.train.evaluate import main

    torch.set_num_threads(1)
    folder = register_untrained_networks(tmp_path / "weights")
    irn, depth = str(folder / "irn-test.safetensors"), str(folder / "depth-test.safetensors")
    scores = {}
    for w in (1.0, 0.5):
        out = tmp_path / f"w{w}.json"
        assert main(["--data", str(world), "--irn", irn, "--depth", depth, "--max-views", "1",
                     "--albedo-weight", str(w), "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["albedo_weight"] == w
        scores[w] = result["mean"]
    assert scores[0.5]["albedo_simse"] != scores[1.0]["albedo_simse"]
    assert scores[0.5]["normal_deg"] == scores[1.0]["normal_deg"]
    for bad in (["--depth", depth, "--albedo-weight", "0"], ["--albedo-weight", "0.5"],  # out of range; no --depth
                ["--shadow-net", "none"]):  # no --depth
        with pytest.raises(SystemExit):
            main(["--data", str(world), "--irn", irn, *bad])
    assert torch.is_grad_enabled()


def test_command_line_shadow_net_none_scores_the_irns_shadow_map(world, tmp_path):
    import json

    from invrender_core.train.evaluate import main

    torch.set_num_threads(1)
    folder = register_untrained_networks(tmp_path / "weights")
    irn, depth = str(folder / "irn-test.safetensors"), str(folder / "depth-test.safetensors")
    results = {}
    for net in ("none", "photo-shadow-small"):
        out = tmp_path / f"{net}.json"
        assert main(["--data", str(world), "--irn", irn, "--depth", depth, "--max-views", "1", "--shadow-net", net,
                     "--out", str(out)]) == 0
        results[net] = json.loads(out.read_text())
        assert results[net]["shadow_net"] == net
    view = EvalViews(world, "heldout", 1)[0]
    h, w = view["image"].shape[:2]
    pred = predict_pipeline(weights.load_named(irn), weights.load_named(depth), view["image"],
                            Camera.from_K(view["K"], w, h), shadow=None)
    none, shipped = (results[k]["per_view"][0]["albedo_simse"] for k in ("none", "photo-shadow-small"))
    assert none == pytest.approx(score_view(view, pred)["albedo_simse"]) and shipped != none
