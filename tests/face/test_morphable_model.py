"""Tests for invrender_core.face.morphable_model: real Surrey model, tiny written models, bad files, npz."""

import struct
from pathlib import Path

import numpy as np
import pytest

from invrender_core.face.morphable_model import (
    MorphableModel,
    load_model,
    load_npz,
    load_surrey,
    save_npz,
)

EOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "eos"
SFM = EOS / "sfm_shape_3448.bin"


def _matrix(a) -> bytes:
    """An Eigen float32 matrix (rows, cols) as cereal writes it: int32 rows, int32 cols, column-major."""
    a = np.asarray(a, dtype="<f4")
    a = a.reshape(-1, 1) if a.ndim == 1 else a
    return struct.pack("<ii", *a.shape) + a.T.tobytes()


def _write_surrey(path, mean, basis, eig, tri, uvs, rows=None):
    """Write a Surrey Face Model .bin: mean (V, 3), basis (V, 3, K), eig (K,), tri (F, 3), uvs (V, 2)."""
    v = mean.shape[0]
    body = _matrix(mean.reshape(-1)) + _matrix(basis.reshape(3 * v, -1)) + _matrix(eig)
    if rows is not None:  # a corrupt header: declared rows for the mean
        body = struct.pack("<i", rows) + body[4:]
    body += struct.pack("<Q", len(tri)) + np.asarray(tri, "<i4").tobytes()
    colour = struct.pack("<ii", 0, 1) + struct.pack("<ii", 0, 0) + struct.pack("<ii", 0, 1) + struct.pack("<Q", 0)
    data = struct.pack("<I", 1) + body + colour + struct.pack("<Q", len(uvs)) + np.asarray(uvs, "<f8").tobytes()
    Path(path).write_bytes(data)
    return data


def _write_blendshapes(path, names, offsets):
    """Write an eos blendshapes .bin: names (E,), offsets (V, 3, E)."""
    data = struct.pack("<Q", len(names))
    for i, name in enumerate(names):
        data += struct.pack("<Q", len(name)) + name.encode() + _matrix(offsets[..., i].reshape(-1))
    Path(path).write_bytes(data)


@pytest.fixture
def tiny(tmp_path):
    """A 4-vertex, 2-component, 2-triangle, 1-blendshape model written in the Surrey format."""
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(4, 3)).astype(np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(12, 2)))
    basis = q.reshape(4, 3, 2).astype(np.float32)
    eig = np.array([4.0, 1.0], np.float32)
    tri = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    uvs = rng.uniform(size=(4, 2))
    offsets = rng.normal(size=(4, 3, 1)).astype(np.float32)
    path = tmp_path / "tiny.bin"
    _write_surrey(path, mean, basis, eig, tri, uvs)
    _write_blendshapes(tmp_path / "tiny_expr.bin", ["smile"], offsets)
    (tmp_path / "map.txt").write_text("[landmark_mappings]\n 9 = 3  # chin\n31 = 1\n")
    return dict(path=path, mean=mean, basis=basis, eig=eig, tri=tri, uvs=uvs, offsets=offsets, dir=tmp_path)


def _load_tiny(t):
    return load_surrey(t["path"], expressions_path=t["dir"] / "tiny_expr.bin", landmarks_path=t["dir"] / "map.txt")


def _one_line_error(exc, name):
    msg = str(exc.value)
    assert "\n" not in msg and name in msg, msg


# --- real Surrey Face Model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sfm():
    if not SFM.is_file():
        pytest.skip(f"Surrey Face Model not found at {SFM}")
    return load_model(SFM)


def test_real_model_sizes(sfm):
    assert (sfm.num_vertices, sfm.num_identity, sfm.num_expressions) == (3448, 63, 6)
    assert sfm.triangles.shape == (6736, 3) and sfm.triangles.dtype == np.int32
    assert sfm.mean.dtype == sfm.shape_basis.dtype == np.float32
    assert list(sfm.expression_names) == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    assert sfm.uvs.shape == (3448, 2) and sfm.uvs.min() >= 0 and sfm.uvs.max() <= 1
    # ibug_to_sfm.txt maps the 50 inner landmarks (the 17 contour ones are listed separately).
    assert len(sfm.landmarks) == 50 and sfm.landmarks["9"] == 33 and sfm.landmarks["31"] == 114


def test_real_model_basis_orthonormal_and_units(sfm):
    b = sfm.shape_basis.reshape(3 * 3448, 63).astype(np.float64)  # (3V, K)
    np.testing.assert_allclose(b.T @ b, np.eye(63), atol=1e-5)
    assert np.all(np.diff(sfm.shape_variances) <= 0) and sfm.shape_variances[0] > 0
    width = np.ptp(sfm.mean[:, 0])
    assert 100 < width < 200  # millimetres


def test_real_model_vertices(sfm):
    np.testing.assert_array_equal(sfm.vertices(), sfm.mean)
    np.testing.assert_allclose(sfm.vertices(np.zeros(63), np.zeros(6)), sfm.mean, atol=1e-5)
    moved = sfm.vertices(np.eye(63)[0]).astype(np.float64) - sfm.mean
    np.testing.assert_allclose(np.linalg.norm(moved), np.sqrt(sfm.shape_variances[0]), rtol=1e-4)
    smile = sfm.vertices(expression=[0, 0, 0, 1.0]) - sfm.mean
    np.testing.assert_allclose(smile, sfm.expression_basis[..., 3], atol=1e-4)


# --- tiny model written by the test -----------------------------------------------------------------


def test_tiny_round_trip_exact(tiny):
    m = _load_tiny(tiny)
    np.testing.assert_array_equal(m.mean, tiny["mean"])
    np.testing.assert_array_equal(m.shape_basis, tiny["basis"])
    np.testing.assert_array_equal(m.shape_variances, tiny["eig"])
    np.testing.assert_array_equal(m.triangles, tiny["tri"])
    np.testing.assert_array_equal(m.uvs, tiny["uvs"].astype(np.float32))
    np.testing.assert_array_equal(m.expression_basis, tiny["offsets"])
    assert list(m.expression_names) == ["smile"] and m.landmarks == {"9": 3, "31": 1}
    assert m.name == "tiny.bin"
    # identity in standard deviations, expression raw weights; prefixes allowed
    expected = tiny["mean"] + tiny["basis"] @ np.array([0.5 * 2.0, -1.0 * 1.0]) + 0.3 * tiny["offsets"][..., 0]
    np.testing.assert_allclose(m.vertices([0.5, -1.0], [0.3]), expected, atol=1e-6)
    np.testing.assert_allclose(m.vertices([0.5]), tiny["mean"] + tiny["basis"][..., 0] * 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="identity"):
        m.vertices(np.zeros(3))


def test_beside_files_picked_up(tiny):
    d = tiny["dir"]
    assert load_surrey(tiny["path"]).num_expressions == 0  # nothing beside it yet
    _write_blendshapes(d / "expression_blendshapes_4.bin", ["a", "b"], np.zeros((4, 3, 2), np.float32))
    (d / "ibug_to_sfm.txt").write_text("[landmark_mappings]\n1 = 0\n")
    m = load_model(tiny["path"])
    assert m.num_expressions == 2 and m.landmarks == {"1": 0}


def test_landmark_fallback_parser(tiny):
    (tiny["dir"] / "map.txt").write_text("[landmark_mappings]\n9 = 3\n9 = 2  # duplicate key: not TOML\n")
    assert _load_tiny(tiny).landmarks == {"9": 2}


# --- bad files ---------------------------------------------------------------------------------------


def test_truncated(tiny):
    data = tiny["path"].read_bytes()
    for cut in (2, 10, 60, len(data) - 5):
        bad = tiny["dir"] / f"cut{cut}.bin"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a Surrey Face Model") as e:
            load_model(bad)
        _one_line_error(e, bad.name)


def test_huge_declared_size(tiny):
    bad = tiny["dir"] / "huge.bin"
    _write_surrey(bad, tiny["mean"], tiny["basis"], tiny["eig"], tiny["tri"], tiny["uvs"], rows=10**9)
    with pytest.raises(ValueError, match="1000000000x1") as e:
        load_surrey(bad)
    _one_line_error(e, "huge.bin")


def test_text_file(tmp_path):
    bad = tmp_path / "notes.bin"
    bad.write_text("this is not a face model\n")
    with pytest.raises(ValueError, match="sfm_shape_") as e:
        load_model(bad)
    _one_line_error(e, "notes.bin")


def test_triangle_out_of_range(tiny):
    bad = tiny["dir"] / "badtri.bin"
    _write_surrey(bad, tiny["mean"], tiny["basis"], tiny["eig"], np.array([[0, 1, 4]]), tiny["uvs"])
    with pytest.raises(ValueError, match=r"triangle.*\[0, 4\)") as e:
        load_surrey(bad)
    _one_line_error(e, "badtri.bin")


def test_bad_blendshapes(tiny):
    bad = tiny["dir"] / "expr5.bin"
    _write_blendshapes(bad, ["x"], np.zeros((5, 3, 1), np.float32))  # 5 vertices, model has 4
    with pytest.raises(ValueError, match="blendshapes") as e:
        load_surrey(tiny["path"], expressions_path=bad)
    _one_line_error(e, "expr5.bin")


def test_validate_non_finite(tiny):
    m = _load_tiny(tiny)
    m.mean[0, 0] = np.nan
    with pytest.raises(ValueError, match="mean has non-finite"):
        m.validate("x.bin")


# --- npz and dispatch --------------------------------------------------------------------------------


def test_npz_round_trip(tiny, tmp_path):
    m = _load_tiny(tiny)
    out = tmp_path / "model.npz"
    save_npz(m, out)
    back = load_model(out)
    for f in ("mean", "shape_basis", "shape_variances", "expression_basis", "expression_names", "triangles", "uvs"):
        np.testing.assert_array_equal(getattr(back, f), getattr(m, f))
    assert back.landmarks == m.landmarks and back.name == m.name
    m.uvs, m.landmarks = None, {}
    m.expression_basis, m.expression_names = np.zeros((4, 3, 0), np.float32), np.zeros(0, str)
    save_npz(m, out)
    back = load_npz(out)
    assert back.uvs is None and back.landmarks == {} and back.num_expressions == 0


def test_npz_bad(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="not an InvRender") as e:
        load_model(bad)
    _one_line_error(e, "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="missing arrays"):
        load_npz(tmp_path / "other.npz")
    keys = ("format_version", "mean", "shape_basis", "shape_variances", "expression_basis", "expression_names",
            "triangles", "landmark_ids", "landmark_vertices")
    np.savez(tmp_path / "obj.npz", **{k: np.array([None], dtype=object) for k in keys})
    with pytest.raises(ValueError, match="unreadable array"):  # object arrays are refused, never unpickled
        load_npz(tmp_path / "obj.npz")


@pytest.mark.parametrize("name, what", [("bfm.mat", "BFM 2009"), ("bfm17.h5", "BFM 2017"), ("flame.pkl", "FLAME")])
def test_not_available_yet(tmp_path, name, what):
    p = tmp_path / name
    p.write_bytes(b"\x80\x04whatever")  # never opened, let alone unpickled
    with pytest.raises(ValueError, match=f"{what}.*not available yet.*npz") as e:
        load_model(p)
    _one_line_error(e, name)


def test_dataclass_validate_shapes():
    m = MorphableModel(
        mean=np.zeros((3, 3), np.float32), shape_basis=np.zeros((3, 3, 2), np.float32),
        shape_variances=np.ones(3, np.float32), expression_basis=np.zeros((3, 3, 0), np.float32),
        expression_names=np.zeros(0, str), triangles=np.array([[0, 1, 2]], np.int32), name="m",
    )
    with pytest.raises(ValueError, match=r"m: shape_variances must be \(K,\) = \(2,\)"):
        m.validate()
