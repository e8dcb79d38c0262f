"""face/rig.py: posed vertices against the formula, and the .npz round trip."""

import numpy as np
import pytest

from invrender_core.face.rig import FaceRig, load_npz, save_npz
from invrender_core.face.synthetic import rotation_from_euler


def small_rig(frames: int = 4, vertices: int = 5, expressions: int = 2) -> FaceRig:
    rng = np.random.default_rng(0)
    return FaceRig(
        name="tiny", neutral=rng.normal(size=(vertices, 3)).astype(np.float32),
        triangles=np.array([[0, 1, 2], [2, 3, 4]], np.int32), uvs=rng.random((vertices, 2)).astype(np.float32),
        expression_basis=rng.normal(size=(vertices, 3, expressions)).astype(np.float32),
        expression_names=np.array(["a", "b"][:expressions]), expression_sigma=np.ones(expressions, np.float32),
        identity=rng.normal(size=3).astype(np.float32),
        expression=rng.random((frames, expressions)).astype(np.float32),
        rotation=np.stack([rotation_from_euler(10 * k, -5 * k, k) for k in range(frames)]).astype(np.float32),
        translation=rng.normal(size=(frames, 3)).astype(np.float32), focal=np.full(frames, 500.0, np.float32),
        frames=np.arange(0, 2 * frames, 2), sh=rng.normal(size=(frames, 9, 3)).astype(np.float32),
        albedo=rng.random((8, 8, 3)).astype(np.float32), image_size=(64, 48), fps=29.97, source="clip.mp4",
        tracks=np.repeat([0, 1], [frames // 2, frames - frames // 2]))


def test_posed_vertices_follow_the_formula():
    rig = small_rig()
    every = rig.vertices()
    assert every.shape == (4, 5, 3)
    for k in range(4):
        local = rig.neutral + rig.expression_basis @ rig.expression[k]
        expect = local @ rig.rotation[k].T + rig.translation[k]
        np.testing.assert_allclose(rig.vertices(k), expect, atol=1e-5)
        np.testing.assert_allclose(every[k], expect, atol=1e-5)


def test_npz_round_trip_and_documented_arrays(tmp_path):
    rig = small_rig()
    path = tmp_path / "params.npz"
    save_npz(rig, path)
    with np.load(path, allow_pickle=False) as z:
        shapes = {k: z[k].shape for k in ("identity", "expression", "rotation", "translation", "focal", "vertices",
                                          "frames", "sh")}
    assert shapes == {"identity": (3,), "expression": (4, 2), "rotation": (4, 3, 3), "translation": (4, 3),
                      "focal": (4,), "vertices": (4, 5, 3), "frames": (4,), "sh": (4, 9, 3)}
    back = load_npz(path)
    for name in ("neutral", "expression", "rotation", "translation", "focal", "frames", "tracks", "sh", "albedo",
                 "uvs"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rig, name))
    assert (back.image_size, back.fps, back.source, back.name) == ((64, 48), 29.97, "clip.mp4", "tiny")


def test_a_file_without_tracks_loads_as_one_stretch(tmp_path):
    path = tmp_path / "params.npz"
    save_npz(small_rig(), path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "tracks"}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    np.testing.assert_array_equal(load_npz(path).tracks, [0, 0, 0, 0])


def test_shape_errors_name_the_array(tmp_path):
    rig = small_rig()
    rig.translation = rig.translation[:3]
    with pytest.raises(ValueError, match=r"translation must have shape \(4, 3\)"):
        rig.validate()
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a face-rig .npz"):
        load_npz(tmp_path / "x.npz")
