"""Tests for invrender_core.face.morphable_model: real Surrey model, tiny written models, bad files, npz."""

import builtins
import io
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from invrender_core.face.morphable_model import (
    MorphableModel,
    load_bfm2009,
    load_bfm2017,
    load_flame,
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
    assert np.corrcoef(sfm.uvs[:, 1], sfm.mean[:, 1])[0, 1] > 0.99  # v up: the forehead is at the texture's top
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
    # The file's v points down (image rows); the model's v points up (Blender).
    np.testing.assert_allclose(m.uvs, np.stack([tiny["uvs"][:, 0], 1 - tiny["uvs"][:, 1]], 1), atol=1e-7)
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


def test_dataclass_validate_shapes():
    m = MorphableModel(
        mean=np.zeros((3, 3), np.float32), shape_basis=np.zeros((3, 3, 2), np.float32),
        shape_variances=np.ones(3, np.float32), expression_basis=np.zeros((3, 3, 0), np.float32),
        expression_names=np.zeros(0, str), triangles=np.array([[0, 1, 2]], np.int32), name="m",
    )
    with pytest.raises(ValueError, match=r"m: shape_variances must be \(K,\) = \(2,\)"):
        m.validate()


# --- BFM 2009, BFM 2017 and FLAME: tiny files written in the releases' layouts ----------------------


def _cap(rings, segments, radius):
    """A hemispherical cap facing +z: vertices (1 + rings * segments, 3), triangles (F, 3) wound outwards."""
    verts = [(0.0, 0.0, radius)]
    for r in range(1, rings + 1):
        polar = 0.5 * np.pi * r / rings  # apex -> rim at z = 0
        for s in range(segments):
            az = 2 * np.pi * s / segments
            ring = radius * np.sin(polar)
            verts.append((ring * np.cos(az), ring * np.sin(az), radius * np.cos(polar)))
    tris = [(0, 1 + s, 1 + (s + 1) % segments) for s in range(segments)]
    for r in range(1, rings):
        for s in range(segments):
            a, b = 1 + (r - 1) * segments + s, 1 + (r - 1) * segments + (s + 1) % segments
            c, d = 1 + r * segments + s, 1 + r * segments + (s + 1) % segments
            tris += [(a, c, d), (a, d, b)]
    verts, tris = np.array(verts), np.array(tris)
    p = verts - verts.mean(0)
    assert np.einsum("ij,ij->", p[tris[:, 0]], np.cross(p[tris[:, 1]], p[tris[:, 2]])) > 0  # outward
    return verts, tris


def _orthonormal(rows, cols, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(rows, cols)))
    return q  # (rows, cols)


@pytest.fixture
def bfm09():
    """BFM 2009 arrays in micrometres: mean (V, 3) mm, shapePC with orthogonal NON-unit columns, std (K,)."""
    mean_mm, tri = _cap(2, 4, radius=6.0)  # 9 vertices, 12 triangles
    pc = _orthonormal(27, 3, 1) * np.array([2.0, 1.0, 0.5])  # (3V, K): lengths fold into the variances
    std_um = np.array([3000.0, 2000.0, 500.0])
    arrays = dict(shapeMU=(mean_mm * 1000).reshape(-1, 1), shapePC=pc, shapeEV=std_um.reshape(-1, 1),
                  tl=(tri + 1).astype(np.float64), texMU=np.full((27, 1), 128.0), segbin=np.ones((9, 4)))
    return dict(arrays=arrays, mean_mm=mean_mm, tri=tri, pc=pc, std_mm=std_um / 1000)


def _write_mat73(path, arrays):
    """A MATLAB 7.3 MAT-file: HDF5 with a 512-byte userblock holding the MATLAB header."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, a in arrays.items():
            f[name] = np.asarray(a).T  # MATLAB is column-major: h5py sees the transpose
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + bytes(8) + b"\x00\x02IM")


def test_bfm2009_v5_micrometres(bfm09, tmp_path):
    path = tmp_path / "01_MorphableModel.mat"
    scipy.io.savemat(path, bfm09["arrays"])
    m = load_model(path)
    assert (m.num_vertices, m.num_identity, m.num_expressions, m.name) == (9, 3, 0, "01_MorphableModel.mat")
    np.testing.assert_allclose(m.mean, bfm09["mean_mm"], atol=1e-5)  # micrometres -> millimetres
    np.testing.assert_array_equal(m.triangles, bfm09["tri"])  # 1-based -> 0-based
    assert m.triangles.dtype == np.int32 and m.uvs is None and m.landmarks == {}
    b = m.shape_basis.reshape(27, 3).astype(np.float64)
    np.testing.assert_allclose(b.T @ b, np.eye(3), atol=1e-6)
    # shapeEV are standard deviations; the column lengths (2, 1, 0.5) are folded in: var = (len * std)^2 mm^2
    np.testing.assert_allclose(m.shape_variances, (np.array([2.0, 1.0, 0.5]) * bfm09["std_mm"]) ** 2, rtol=1e-6)
    alpha = np.array([0.5, -1.0, 2.0])  # the release's sampler: shapeMU + shapePC * (alpha .* shapeEV)
    expected = bfm09["mean_mm"].reshape(-1) + bfm09["pc"] @ (alpha * bfm09["std_mm"])
    np.testing.assert_allclose(m.vertices(alpha), expected.reshape(9, 3), atol=1e-5)


def test_bfm2009_v73_millimetres(bfm09, tmp_path):
    a = dict(bfm09["arrays"], shapeMU=bfm09["arrays"]["shapeMU"] / 1000, shapeEV=bfm09["arrays"]["shapeEV"] / 1000)
    path = tmp_path / "bfm73.mat"
    _write_mat73(path, a)
    m = load_bfm2009(path)
    np.testing.assert_allclose(m.mean, bfm09["mean_mm"], atol=1e-5)  # already mm: not scaled
    np.testing.assert_array_equal(m.triangles, bfm09["tri"])
    v5 = tmp_path / "bfm5.mat"
    scipy.io.savemat(v5, bfm09["arrays"])
    ref = load_bfm2009(v5)
    np.testing.assert_allclose(m.vertices([1.0, -0.5, 0.3]), ref.vertices([1.0, -0.5, 0.3]), atol=1e-5)
    np.testing.assert_allclose(m.shape_variances, ref.shape_variances, rtol=1e-6)


def test_bfm2009_bad(bfm09, tmp_path):
    arrays = dict(bfm09["arrays"])
    del arrays["shapeMU"]
    scipy.io.savemat(tmp_path / "nomu.mat", arrays)
    with pytest.raises(ValueError, match="Basel Face Model 2009.*missing shapeMU.*01_MorphableModel.mat") as e:
        load_model(tmp_path / "nomu.mat")
    _one_line_error(e, "nomu.mat")
    _write_mat73(tmp_path / "notl.mat", {k: v for k, v in bfm09["arrays"].items() if k != "tl"})
    with pytest.raises(ValueError, match="missing tl"):
        load_model(tmp_path / "notl.mat")
    scipy.io.savemat(tmp_path / "pc.mat", dict(bfm09["arrays"], shapePC=bfm09["pc"][:-3]))
    with pytest.raises(ValueError, match=r"shapePC \(24, 3\)"):
        load_model(tmp_path / "pc.mat")
    scipy.io.savemat(tmp_path / "tl0.mat", dict(bfm09["arrays"], tl=bfm09["tri"]))  # 0-based: not MATLAB's
    with pytest.raises(ValueError, match="1-based"):
        load_model(tmp_path / "tl0.mat")


@pytest.fixture
def bfm17():
    """BFM 2017 arrays (mm): shape mean, orthonormal basis, variances; expression mean offset, basis, variances."""
    mean, tri = _cap(2, 4, radius=60.0)
    rng = np.random.default_rng(2)
    return dict(
        mean=mean.reshape(-1).astype(np.float32), pc=_orthonormal(27, 3, 3).astype(np.float32),
        var=np.array([9.0, 4.0, 1.0], np.float32), tri=tri,
        e_mean=rng.normal(scale=0.5, size=27).astype(np.float32), e_pc=_orthonormal(27, 2, 4).astype(np.float32),
        e_var=np.array([0.25, 0.04], np.float32),
    )


def _write_bfm2017(path, d, cells=None, expression=True, drop=None):
    with h5py.File(path, "w") as f:
        for key, value in (("shape/model/mean", d["mean"]), ("shape/model/pcaBasis", d["pc"]),
                           ("shape/model/pcaVariance", d["var"]), ("shape/model/noiseVariance", np.float32(0.1)),
                           ("shape/representer/points", d["mean"].reshape(-1, 3).T),
                           ("shape/representer/cells", (d["tri"] if cells is None else cells).T.astype(np.uint32)),
                           ("color/model/mean", np.full(27, 0.5, np.float32))):
            if key != drop:
                f[key] = value
        if expression:
            f["expression/model/mean"], f["expression/model/pcaBasis"] = d["e_mean"], d["e_pc"]
            f["expression/model/pcaVariance"] = d["e_var"]


def test_bfm2017(bfm17, tmp_path):
    path = tmp_path / "model2017-1_bfm_nomouth.h5"
    _write_bfm2017(path, bfm17)
    m = load_model(path)
    assert (m.num_vertices, m.num_identity, m.num_expressions) == (9, 3, 2)
    assert list(m.expression_names) == ["Exp00", "Exp01"] and m.uvs is None
    np.testing.assert_array_equal(m.triangles, bfm17["tri"])  # (3, F) cells -> (F, 3)
    np.testing.assert_allclose(m.shape_variances, bfm17["var"], rtol=1e-6)
    # statismo: mean + pcaBasis diag(sqrt(var)) alpha; the expression mean is an offset added to the mean
    alpha, beta = np.array([1.0, -2.0, 0.5]), np.array([0.7, -1.5])
    d = {k: np.asarray(v, np.float64) for k, v in bfm17.items()}
    expected = (d["mean"] + d["e_mean"] + d["pc"] @ (alpha * np.sqrt(d["var"]))
                + d["e_pc"] @ (beta * np.sqrt(d["e_var"])))
    np.testing.assert_allclose(m.vertices(alpha, beta), expected.reshape(9, 3), atol=1e-5)
    np.testing.assert_allclose(m.vertices(), (d["mean"] + d["e_mean"]).reshape(9, 3), atol=1e-5)

    _write_bfm2017(path, bfm17, expression=False)  # no expression model: E = 0, the mean is the shape mean
    m = load_bfm2017(path)
    assert m.num_expressions == 0
    np.testing.assert_allclose(m.mean, bfm17["mean"].reshape(9, 3), atol=1e-6)


def test_bfm2017_basis_normalised_or_rediagonalised(bfm17, tmp_path):
    path = tmp_path / "m.h5"
    lengths = np.array([3.0, 1.0, 0.2], np.float32)
    _write_bfm2017(path, dict(bfm17, pc=bfm17["pc"] * lengths))  # orthogonal, not unit: lengths -> variances
    m = load_model(path)
    np.testing.assert_allclose(m.shape_basis.reshape(27, 3), bfm17["pc"], atol=1e-6)
    np.testing.assert_allclose(m.shape_variances, bfm17["var"] * lengths**2, rtol=1e-5)

    skew = np.random.default_rng(5).normal(size=(27, 3)).astype(np.float32)  # not orthogonal: SVD, same covariance
    _write_bfm2017(path, dict(bfm17, pc=skew))
    m = load_model(path)
    b = m.shape_basis.reshape(27, 3).astype(np.float64)
    np.testing.assert_allclose(b.T @ b, np.eye(3), atol=1e-5)
    cov_file = skew.astype(np.float64) @ np.diag(bfm17["var"].astype(np.float64)) @ skew.T.astype(np.float64)
    np.testing.assert_allclose(b @ np.diag(m.shape_variances.astype(np.float64)) @ b.T, cov_file, atol=1e-3 * 9)
    assert np.all(np.diff(m.shape_variances) <= 0)


def test_winding_made_outward_and_landmarks(bfm17, tmp_path):
    path = tmp_path / "inward.h5"
    _write_bfm2017(path, bfm17, cells=bfm17["tri"][:, ::-1])  # the same mesh wound inwards
    (tmp_path / "map.txt").write_text("[landmark_mappings]\n31 = 0\n")
    m = load_model(path, landmarks_path=tmp_path / "map.txt")
    np.testing.assert_array_equal(m.triangles, bfm17["tri"])
    assert m.landmarks == {"31": 0}
    with pytest.raises(ValueError, match="expressions_path applies to Surrey"):
        load_model(path, expressions_path=tmp_path / "map.txt")


def test_bfm2017_bad(bfm17, tmp_path):
    path = tmp_path / "nomean.h5"
    _write_bfm2017(path, bfm17, drop="shape/model/mean")
    with pytest.raises(ValueError, match="Model 2017.*missing shape/model/mean.*model2017-1_bfm_nomouth") as e:
        load_model(path)
    _one_line_error(e, "nomean.h5")
    _write_bfm2017(path, dict(bfm17, e_pc=bfm17["e_pc"][:24]))
    with pytest.raises(ValueError, match="expression/model"):
        load_model(path)
    _write_bfm2017(path, dict(bfm17, var=-bfm17["var"]))
    with pytest.raises(ValueError, match="pcaVariance must be >= 0"):
        load_model(path)


class Ch:
    """What chumpy.ch.Ch pickles: NEWOBJ(Ch) then BUILD with its __dict__ (array in 'x', caches dropped)."""

    def __init__(self, x):
        self.__dict__.update(x=x, _dirty_vars=set(), _itr=None, _depends_on_deps={}, _make_dense=False,
                             _make_sparse=False)


Ch.__module__ = "chumpy.ch"


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 pickled str (BINSTRING), as the FLAME releases' cPickle did."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_str2(self, obj):
        op = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else pickle.BINSTRING + struct.pack(
            "<i", len(obj))
        self.write(op + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str2


def _pickle_with_chumpy(obj, protocol) -> bytes:
    """Pickle `obj` with `Ch` named chumpy.ch.Ch (fake modules only while pickling; chumpy is not installed).

    protocol "py2": protocol 2 with Python 2 names (__builtin__, copy_reg) and str opcodes for bytes;
    "numpy2": protocol 2 naming numpy 2's modules (numpy._core.*).
    """
    ch_module, package = types.ModuleType("chumpy.ch"), types.ModuleType("chumpy")
    ch_module.Ch, package.ch = Ch, ch_module
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "chumpy", package)
        mp.setitem(sys.modules, "chumpy.ch", ch_module)
        if protocol == "py2":
            buffer = io.BytesIO()
            _Python2Pickler(buffer, protocol=2).dump(obj)
            return buffer.getvalue()
        if protocol == "numpy2":
            return pickle.dumps(obj, protocol=2).replace(b"numpy.core.", b"numpy._core.")
        return pickle.dumps(obj, protocol=protocol)


@pytest.fixture(scope="module")
def flame():
    """FLAME arrays (metres): a 109-vertex cap, 300 identity components scaled by their std, 2 expressions."""
    template, tri = _cap(9, 12, radius=0.01)
    v = template.shape[0]
    std = np.linspace(2e-3, 1e-5, 300)  # metres
    dirs = np.concatenate([(_orthonormal(3 * v, 300, 6) * std).reshape(v, 3, 300),
                           np.random.default_rng(7).normal(scale=1e-3, size=(v, 3, 2))], axis=2)  # (V, 3, 302)
    model = dict(v_template=template, shapedirs=Ch(dirs), f=tri.astype(np.uint32),
                 posedirs=Ch(np.zeros((v, 3, 36))), weights=np.full((v, 5), 0.2),
                 J_regressor=scipy.sparse.csc_matrix(np.full((5, v), 1.0 / v)),
                 kintree_table=np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.uint32),
                 bs_style="lbs", bs_type="lrotmin")
    return dict(model=model, template=template, dirs=dirs, std=std, tri=tri)


@pytest.mark.parametrize("protocol", ["py2", "numpy2", 0, 2, 5])
def test_flame(flame, tmp_path, protocol):
    path = tmp_path / "generic_model.pkl"
    data = _pickle_with_chumpy(flame["model"], protocol)
    assert (b"numpy._core." in data) == (protocol == "numpy2")
    assert (b"_codecs" in data) == (protocol in (0, 2, "numpy2"))  # Python 3 bytes below protocol 3
    path.write_bytes(data)
    m = load_model(path)
    assert (m.num_vertices, m.num_identity, m.num_expressions) == (109, 300, 2)
    assert list(m.expression_names) == ["Exp00", "Exp01"] and m.uvs is None and m.landmarks == {}
    np.testing.assert_array_equal(m.triangles, flame["tri"])
    np.testing.assert_allclose(m.mean, flame["template"] * 1000, atol=1e-5)  # metres -> millimetres
    np.testing.assert_allclose(m.shape_variances, (flame["std"] * 1000) ** 2, rtol=1e-5)  # column lengths = std
    b = m.shape_basis.reshape(-1, 300).astype(np.float64)
    np.testing.assert_allclose(b.T @ b, np.eye(300), atol=1e-5)
    # FLAME: v_template + shapedirs @ [betas, psi] (metres), here in mm
    betas, psi = np.array([1.0, -0.5, 2.0]), np.array([0.8, -1.2])
    d = flame["dirs"]
    expected = 1000 * (flame["template"] + d[..., :3] @ betas + d[..., 300:] @ psi)
    np.testing.assert_allclose(m.vertices(betas, psi), expected, atol=1e-5)


class _RunsCommand:
    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("kind", ["system", "eval"])
def test_flame_refuses_other_objects_without_running_them(flame, tmp_path, kind):
    marker = tmp_path / "ran"
    call = ((os.system, (f"touch {marker}",)) if kind == "system"
            else (builtins.eval, (f"open({str(marker)!r}, 'w').close()",)))
    path = tmp_path / "evil.pkl"
    path.write_bytes(_pickle_with_chumpy(dict(flame["model"], weights=_RunsCommand(call)), 2))
    with pytest.raises(ValueError, match="FLAME.*not allowed.*generic_model.pkl") as e:
        load_model(path)
    _one_line_error(e, "evil.pkl")
    assert not marker.exists()


def test_flame_bad(flame, tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({k: v for k, v in flame["model"].items() if k not in ("shapedirs", "posedirs")}))
    with pytest.raises(ValueError, match="missing shapedirs.*generic_model.pkl") as e:
        load_model(path)
    _one_line_error(e, "bad.pkl")
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="expected a dict"):
        load_flame(path)
    no_array = Ch(None)
    del no_array.__dict__["x"]
    path.write_bytes(_pickle_with_chumpy(dict(flame["model"], shapedirs=no_array), 2))
    with pytest.raises(ValueError, match="chumpy expression without a stored array"):
        load_flame(path)
    path.write_bytes(_pickle_with_chumpy(dict(flame["model"], shapedirs=Ch(flame["dirs"][:5])), 2))
    with pytest.raises(ValueError, match=r"shapedirs must be \(V, 3, N\) with V = 109"):
        load_flame(path)
    path.write_bytes(pickle.dumps(flame["model"]["v_template"])[:40])
    with pytest.raises(ValueError, match="unreadable pickle"):
        load_flame(path)


@pytest.mark.parametrize("name, what, hint", [
    ("bfm.mat", "Basel Face Model 2009", "01_MorphableModel.mat"),
    ("bfm17.h5", "Basel Face Model 2017", "model2017-1_bfm_nomouth.h5"),
    ("bfm19.hdf5", "Basel Face Model 2017", "model2019_fullHead.h5"),
    ("flame.pkl", "FLAME", "generic_model.pkl"),
])
def test_wrong_file_with_model_suffix(tmp_path, name, what, hint):
    p = tmp_path / name
    p.write_text("this is not a face model\n")
    with pytest.raises(ValueError, match=f"is not a {what}.*{hint}") as e:
        load_model(p)
    _one_line_error(e, name)
