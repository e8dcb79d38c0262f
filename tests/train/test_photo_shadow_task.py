"""train/photo_shadow_task.py: the photo-shadow network's training items, scores and that training finds shadows."""

import numpy as np
import pytest
import torch

from invrender_core.nets.photo_shadow import INPUT_CHANNELS, PhotoShadowNet, true_shadow_map
from invrender_core.train.data import read_view, write_view
from invrender_core.train.photo_shadow_task import PhotoShadowTask, calibrate, photo_items, predicted_map, scores
from invrender_core.train.relight_task import pair_views
from invrender_core.train.synthetic import make_dataset


@pytest.fixture(scope="module")
def two_light_root(tmp_path_factory):
    """Two-light views with a sky and light A's cast shadow (the synthetic renders have neither)."""
    root = make_dataset(tmp_path_factory.mktemp("two_light"), scenes=1, views=2, heldout=0, second_light=True)
    for path in pair_views(root, "train"):
        view = read_view(path, ground_truth=True)
        view["gt_shadow"][10:20, 8:24] = 0.0
        view["sky_sh_camera"][0] = 0.5
        view["relight_sky_sh_camera"][0] = 0.5
        write_view(path, view)
    return root


def test_both_photos_of_a_pair_view_are_items_with_their_own_true_shadow_map(two_light_root):
    path = pair_views(two_light_root, "train")[0]
    view = read_view(path, ground_truth=True)
    items = photo_items(path)
    assert len(items) == 2
    h, w = view["image"].shape[:2]
    sky = view["sky_mask"].astype(bool)
    for item, keys in zip(items, (("gt_shadow", "sun_camera", "sun_irradiance", "sky_sh_camera"),
                                  ("relight_gt_shadow", "relight_sun_camera", "relight_sun_irradiance",
                                   "relight_sky_sh_camera")), strict=True):
        assert item["features"].shape == (INPUT_CHANNELS, h, w) and np.isfinite(item["features"]).all()
        expected = true_shadow_map(view["gt_normal"], *(view[k] for k in keys), sky)
        np.testing.assert_array_equal(item["target"][0], expected)
        np.testing.assert_array_equal(item["ground"][0], ~sky)
    shadow = items[0]["target"][0, 10:20, 8:24]
    assert (shadow < 1).any() and (items[1]["target"][0, 10:20, 8:24] == 1).all()  # light A's shadow only
    assert not np.array_equal(items[0]["features"][:4], items[1]["features"][:4])  # two photos


def test_scores_count_cast_shadows_on_the_ground_only():
    target = np.ones((4, 4), np.float32)
    target[1:3, 1:3] = 0.2
    ground = np.ones((1, 4, 4), np.float32)
    ground[0, 0] = 0.0
    item = {"target": target[None], "ground": ground}
    assert scores([target], [item]) == {"shadow_iou": 1.0, "log_error": 0.0}
    lit = scores([np.ones_like(target)], [item])
    assert lit["shadow_iou"] == 0.0
    assert lit["log_error"] == pytest.approx(4 * -np.log(0.2) / 12, rel=1e-5)  # 4 of the 12 ground pixels
    in_sky = target.copy()
    in_sky[0] = 0.1  # a shadow on the sky does not count
    assert scores([in_sky], [item])["shadow_iou"] == 1.0


def test_training_finds_the_shadows_the_shading_does_not_explain():
    """Dark squares that the shading does not explain are shadows; squares dark in the photo only (dark albedo,
    which the shading's ratio also shows) with blue-free colour are not: a few hundred steps tell them apart."""
    rng = np.random.default_rng(0)
    n, h, w = 16, 16, 16
    features = np.zeros((n, INPUT_CHANNELS, h, w), np.float32)
    target = np.ones((n, 1, h, w), np.float32)
    for k in range(n):
        for _ in range(4):
            y, x = rng.integers(0, h - 4, 2)
            features[k, 0, y:y + 4, x:x + 4] = -0.7  # dark in the photo
            features[k, 7, y:y + 4, x:x + 4] = -0.7  # and unexplained by the shading
            if rng.random() < 0.5:  # a shadow: lit by the blue sky alone
                features[k, 3, y:y + 4, x:x + 4] = 0.3
                target[k, 0, y:y + 4, x:x + 4] = 0.2
    features[:, 6] = 1.0  # normals facing the camera
    task = PhotoShadowTask.__new__(PhotoShadowTask)  # the loss only: no dataset
    task.iou_weight = 3.0
    torch.manual_seed(0)
    net = PhotoShadowNet(width=8, levels=2)
    batch = {"features": torch.from_numpy(features), "target": torch.from_numpy(target),
             "ground": torch.ones(n, 1, h, w)}
    items = [{"target": target[k], "ground": np.ones((1, h, w), np.float32)} for k in range(n)]

    def iou():
        net.eval()
        maps = [predicted_map(net, {"features": f}) for f in features]
        net.train()
        return scores(maps, items)["shadow_iou"]

    before = iou()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        loss = task.compute_losses(net, batch)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 0.6 and iou() > 0.9


class LinearLogit(PhotoShadowNet):
    """A 'network' whose logit is its head's weight times feature channel 0 plus the head's bias."""

    def __init__(self):
        super().__init__(width=4, levels=1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0, 0] = 1.0

    def forward(self, features):
        return features[:, :1] * self.head.weight[0, 0] + self.head.bias


def test_calibration_finds_the_logit_gain_and_offset_of_the_true_maps():
    rng = np.random.default_rng(4)
    items = []
    for _ in range(3):
        z = rng.normal(0.0, 3.0, (1, 8, 8)).astype(np.float32)
        features = np.zeros((INPUT_CHANNELS, 8, 8), np.float32)
        features[0] = z[0]
        target = 1.0 / (1.0 + np.exp(-(0.5 * z + 1.0)))  # the truth is shallower than the network's map
        items.append({"features": features, "target": target.astype(np.float32),
                      "ground": np.ones((1, 8, 8), np.float32)})
    net = LinearLogit().eval()
    gain, offset, before, after = calibrate(net, items)
    assert (gain, offset) == (0.5, 1.0)
    assert after < 1e-6 < 0.1 < before
    x = torch.from_numpy(items[0]["features"][None])
    np.testing.assert_allclose(net(x)[0, 0].detach().numpy(), 0.5 * items[0]["features"][0] + 1.0, rtol=1e-6)


def test_calibration_refuses_to_write_over_the_trained_weights(tmp_path, capsys):
    from safetensors.torch import save_file

    from invrender_core.train.photo_shadow_task import main

    path = tmp_path / "model.safetensors"
    save_file(PhotoShadowNet(width=4, levels=1).state_dict(), str(path))
    before = path.read_bytes()
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--weights", str(path), "--calibrate", str(path)])
    assert "--calibrate must differ from --weights" in capsys.readouterr().err
    assert path.read_bytes() == before
