"""train/face_task.py and train/evaluate_face.py: synthetic crops, pseudo-labels from the fit, real crops,
and the evaluation's metrics against analytic answers."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from invrender_core.camera import Camera
from invrender_core.face.morphable_model import load_model
from invrender_core.face.render import SurfaceLookup, TemplateFrame
from invrender_core.face.synthetic import FaceParams, render_face, rotation_from_euler
from invrender_core.train import evaluate_face, face_task

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_eos = pytest.mark.skipif(not (DATA / "eos" / "sfm_shape_3448.bin").exists(), reason="../shared/data missing")


@pytest.fixture(scope="module")
def sfm():
    return load_model(DATA / "eos" / "sfm_shape_3448.bin")


@needs_eos
def test_pseudo_labels_of_a_true_prediction_are_the_truth(sfm):
    """Fitting the model to exact template maps and rasterising the fit gives back the template maps."""
    size = 96
    camera = Camera.from_fov(size, size, 20.0)
    frame = TemplateFrame.of(sfm.mean)
    R = rotation_from_euler(-20.0, 10.0, 0.0)
    identity = np.random.default_rng(1).normal(0, 1, sfm.num_identity)
    t = np.array([0.0, 0.0, -camera.fx * 2 * frame.scale / (0.65 * size)]) - R @ frame.centre
    out = render_face(sfm, FaceParams(identity, np.zeros(6), R, t, camera, np.zeros((9, 3))),
                      np.full((sfm.num_vertices, 3), 0.5), frame)
    lookup = SurfaceLookup(sfm.mean, sfm.triangles)
    mask = out["mask"].astype(np.float32)
    labels, label_mask = face_task.pseudo_labels(sfm, lookup, out["template"], mask, mask,
                                                 np.random.default_rng(0))
    both = label_mask & out["mask"]
    assert both.sum() > 0.9 * out["mask"].sum()
    error_mm = np.linalg.norm(labels[both] - out["template"][both], axis=1) * frame.scale
    assert np.median(error_mm) < 1.0
    nothing, empty = face_task.pseudo_labels(sfm, lookup, out["template"], np.zeros_like(mask), mask,
                                             np.random.default_rng(0))
    assert not empty.any() and not nothing.any()


def _as_output(rendered: dict) -> torch.Tensor:
    """A rendering's exact template map as network output (1, 5, S, S): sure face inside, no face outside."""
    mask = rendered["mask"]
    out = np.concatenate([rendered["template"].transpose(2, 0, 1), np.where(mask, 20.0, -20.0)[None],
                          np.full((1, *mask.shape), -10.0)])
    return torch.from_numpy(out[None].astype(np.float32))


@needs_eos
def test_real_loss_fits_the_average_of_a_crop_and_its_mirror_image(sfm):
    """The mean face and its mirror image (pose mirrored) rendered exactly: averaged, the two outputs fit back
    to the same face, so the loss stays near zero; an output paired with itself in place of its mirror image's
    is no face at all, and the fit and the loss show it."""
    task = face_task.FaceTask(DATA / "eos" / "sfm_shape_3448.bin", width=4, size=96)
    size = 96
    camera = Camera.from_fov(size, size, 20.0)
    frame = task.lookup.frame
    mirror = np.diag([-1.0, 1.0, 1.0])
    R = rotation_from_euler(-25.0, 10.0, 5.0)
    t = np.array([3.0, 0.0, -camera.fx * 2 * frame.scale / (0.65 * size)]) - R @ frame.centre
    neutral = (np.zeros(sfm.num_identity), np.zeros(sfm.num_expressions))
    albedo = np.full((sfm.num_vertices, 3), 0.5)
    seen = render_face(sfm, FaceParams(*neutral, R, t, camera, np.zeros((9, 3))), albedo, frame)
    mirrored = render_face(sfm, FaceParams(*neutral, mirror @ R @ mirror, mirror @ t, camera, np.zeros((9, 3))),
                           albedo, frame)
    assert np.abs(mirrored["mask"][:, ::-1] ^ seen["mask"]).mean() < 0.01  # it is the mirror image
    out = _as_output(seen)
    exact = float(task.real_loss(out, _as_output(mirrored))) * frame.scale  # mm, L1 over xyz
    assert exact < 1.0
    assert float(task.real_loss(out, out)) * frame.scale > 5 * exact


@needs_eos
def test_synthetic_crops_and_real_crops(sfm):
    from invrender_core.face.synthetic import SyntheticFaces

    video = DATA / "videos" / "liveportrait_d3.mp4"
    crops = face_task.real_face_crops([video], 64, max_crops=5)
    assert crops.shape == (5, 64, 64, 3) and crops.dtype == np.uint8 and crops.std() > 10
    items = face_task.SyntheticFaceCrops(SyntheticFaces(sfm, size=64), length=10, real_crops=crops)
    item = items[7]
    assert set(item) == {"image", "template", "mask", "real_image"}
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    torch.testing.assert_close(item["real_image"], torch.from_numpy(crops[2].transpose(2, 0, 1) / 255.0).float())

def test_real_crops_need_a_face(tmp_path):
    from invrender_core.io._cv import cv2

    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((80, 80, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="no face found"):
        face_task.real_face_crops([grey], 64)


def test_similarity_alignment_and_rotation_error_are_exact():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3))
    R = rotation_from_euler(30.0, -20.0, 10.0)
    moved = 1.7 * points @ R.T + [1.0, -2.0, 3.0]
    assert evaluate_face.similarity_aligned_error(points, moved) < 1e-9
    noisy = moved + [[0.1, 0.0, 0.0]] * np.array([[1], [-1]] * 25)
    assert evaluate_face.similarity_aligned_error(points, noisy) == pytest.approx(0.1, rel=0.05)
    a = np.stack([rotation_from_euler(0, 0, 0), rotation_from_euler(10, 0, 0)])
    b = np.stack([rotation_from_euler(5, 0, 0), rotation_from_euler(10, 0, 0)])
    np.testing.assert_allclose(evaluate_face.rotation_error_deg(a, b), [5.0, 0.0], atol=1e-5)  # arccos near 1


def test_shots_break_at_a_cut_and_at_frames_left_out():
    rig = SimpleNamespace(frames=np.array([0, 1, 2, 4, 5, 6]),  # frame 3 had no face
                          tracks=np.array([0, 0, 0, 0, 1, 1]))  # the tracker switched faces at frame 5
    np.testing.assert_array_equal(evaluate_face.shots(rig, step=1), [0, 0, 0, 1, 2, 2])
    rig.frames = np.arange(0, 12, 2)  # every other frame fitted (step 2): no gap
    np.testing.assert_array_equal(evaluate_face.shots(rig, step=2), [0, 0, 0, 0, 1, 1])


@pytest.mark.skipif(not (DATA / "eos" / "image_0010.pts").exists(), reason="../shared/data missing")
def test_landmark_files_are_read_in_pixel_centre_coordinates():
    pts = evaluate_face.read_landmarks(DATA / "eos" / "image_0010.png")
    assert pts.shape == (68, 2)
    np.testing.assert_allclose(pts[0], [611.284152 - 0.5, 272.773913 - 0.5])
    mat = evaluate_face.read_landmarks(DATA / "aflw2000_prnet" / "image00050.jpg")
    assert mat.shape == (68, 2) and np.all((mat > 0) & (mat < 450))


@needs_eos
def test_synthetic_scores_average_the_clips(sfm):
    """The synthetic score is the mean over clips, the rotation statistics span every frame of every clip."""
    from invrender_core.face.pipeline import FaceSettings
    from invrender_core.nets import face_corr

    net = face_corr.load("face-corr-small")
    settings = FaceSettings(texture_size=64, texture_frames=2)
    scores = evaluate_face.evaluate_synthetic(sfm, settings, net, frames=3, seeds=(0, 1))
    clips = scores["clips"]
    assert [c["seed"] for c in clips] == [0, 1] and all(c["frames_fitted"] == 3 for c in clips)
    assert scores["identity_error"] == pytest.approx(np.mean([c["identity_error"] for c in clips]), abs=1e-3)
    assert scores["rotation_error_mean_deg"] == pytest.approx(np.mean([c["rotation_error_mean_deg"] for c in clips]),
                                                              abs=2e-3)  # equal frame counts
    assert scores["rotation_error_max_deg"] == max(c["rotation_error_max_deg"] for c in clips)
    assert clips[0]["identity_error_mean_shape"] != clips[1]["identity_error_mean_shape"]  # two identities
