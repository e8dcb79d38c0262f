"""3D morphable face models: the `MorphableModel` dataclass and loaders for the user's model file.

Restricted models (SFM, BFM, FLAME) are never shipped: loaders read the file the user gives.

Supported files
---------------
- Surrey Face Model (eos, cereal binary, little-endian, class version 1), e.g. ``sfm_shape_3448.bin``::

      uint32 version (1)
      shape PCA model:  mean, basis, eigenvalues   each an Eigen matrix: int32 rows, int32 cols,
                                                   rows*cols float32 column-major
                        triangles                  uint64 count, count*3 int32
      colour PCA model: same layout (empty in the SFM shape-only models; read and ignored)
      texture coords:   uint64 count, count*2 float64

  The mean is (3V, 1) with x, y, z per vertex in millimetres; the basis (3V, K) is ORTHONORMAL (unit
  columns, not scaled by the standard deviations); the eigenvalues (K, 1) are the variances (mm^2).
  Expression blendshapes (``expression_blendshapes_3448.bin``): uint64 count, then per blendshape a
  string (uint64 length + bytes) and an Eigen matrix (3V, 1) holding the offset from the mean (mm).
  The landmark map (``ibug_to_sfm.txt``, TOML): ``[landmark_mappings]`` ibug id (1-based) = vertex
  index (0-based). Both are picked up beside the model file when present.
- InvRender ``.npz`` (`save_npz` / `load_npz`, ``allow_pickle=False``), arrays::

      format_version      ()        int64, 1
      name                ()        unicode
      mean                (V, 3)    float32
      shape_basis         (V, 3, K) float32, orthonormal when flattened to (3V, K)
      shape_variances     (K,)      float32
      expression_basis    (V, 3, E) float32, offsets from the mean per unit weight (E may be 0)
      expression_names    (E,)      unicode
      triangles           (F, 3)    int32, 0-based, counter-clockwise seen from outside
      uvs                 (V, 2)    float32, optional (absent when the model has none)
      landmark_ids        (L,)      unicode, ibug-68 ids "1".."68"
      landmark_vertices   (L,)      int64, 0-based vertex indices

BFM 2009 (.mat), BFM 2017 (.h5) and FLAME (.pkl) are not read yet: convert them to the .npz layout.
"""

from __future__ import annotations

import struct
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SURREY_VERSION = 1
NPZ_FORMAT_VERSION = 1
MAX_FILE_BYTES = 1 << 30  # far above any face model (SFM 3448: 2.8 MB); refuse before reading
EXPRESSIONS_NAME = "expression_blendshapes_{v}.bin"
LANDMARKS_NAME = "ibug_to_sfm.txt"
_SURREY_HINT = "give the sfm_shape_*.bin from eos' share folder"
_BLEND_HINT = "give the expression_blendshapes_*.bin from eos' share folder"
_NPZ_HINT = "write it with invrender_core.face.morphable_model.save_npz"


@dataclass
class MorphableModel:
    """A linear 3D morphable face model (identity PCA + expression blendshapes).

    Attributes:
        mean: (V, 3) float32 mean shape, in model units (millimetres for the Surrey model).
        shape_basis: (V, 3, K) float32 identity basis; flattened to (3V, K) its columns are orthonormal
            (unit length, NOT scaled by the standard deviations).
        shape_variances: (K,) float32 variance of each identity component (model units squared).
        expression_basis: (V, 3, E) float32 blendshape offsets from the mean per unit weight; E may be 0.
        expression_names: (E,) names of the blendshapes.
        triangles: (F, 3) int32 0-based vertex indices.
        uvs: (V, 2) float32 texture coordinates in [0, 1], or None.
        landmarks: ibug-68 landmark id as a string ("1".."68") -> 0-based vertex index; may be empty.
        name: a label (the file name for loaded models).
    """

    mean: np.ndarray
    shape_basis: np.ndarray
    shape_variances: np.ndarray
    expression_basis: np.ndarray
    expression_names: np.ndarray
    triangles: np.ndarray
    uvs: np.ndarray | None = None
    landmarks: dict[str, int] = field(default_factory=dict)
    name: str = ""

    @property
    def num_vertices(self) -> int:
        """V, the number of vertices."""
        return int(self.mean.shape[0])

    @property
    def num_identity(self) -> int:
        """K, the number of identity (shape PCA) components."""
        return int(self.shape_basis.shape[2])

    @property
    def num_expressions(self) -> int:
        """E, the number of expression blendshapes."""
        return int(self.expression_basis.shape[2])

    def vertices(self, identity=None, expression=None) -> np.ndarray:
        """Mesh vertices (V, 3) float32 for the given coefficients.

        Args:
            identity: (k,) identity coefficients in units of standard deviations, k <= K (the first k
                components; missing ones are 0). Shape = mean + basis[..., :k] @ (identity * sqrt(var[:k])).
            expression: (e,) raw blendshape weights, e <= E (the first e blendshapes; missing ones are 0),
                added as expression_basis[..., :e] @ expression. Typical weights lie in [0, 1].
        """
        out = self.mean.astype(np.float64)  # (V, 3); accumulate in float64, return float32
        if identity is not None:
            c = _coefficients(identity, self.num_identity, "identity")  # (k,)
            out = out + self.shape_basis[..., : c.size] @ (c * np.sqrt(self.shape_variances[: c.size]))
        if expression is not None:
            w = _coefficients(expression, self.num_expressions, "expression")  # (e,)
            out = out + self.expression_basis[..., : w.size] @ w
        return out.astype(np.float32)

    def validate(self, source: str | None = None) -> MorphableModel:
        """Check shapes, index ranges and finiteness; raise a one-line ValueError naming `source`.

        Returns self so that loaders can chain it.
        """
        where = source or self.name or "morphable model"

        def fail(msg):
            raise ValueError(f"{where}: {msg}")

        mean, basis, var = self.mean, self.shape_basis, self.shape_variances
        if mean.ndim != 2 or mean.shape[1] != 3 or mean.shape[0] < 1:
            fail(f"mean must be (V, 3), got {mean.shape}")
        v = mean.shape[0]
        if basis.ndim != 3 or basis.shape[:2] != (v, 3):
            fail(f"shape_basis must be (V, 3, K) with V = {v}, got {basis.shape}")
        k = basis.shape[2]
        if var.shape != (k,):
            fail(f"shape_variances must be (K,) = ({k},), got {var.shape}")
        expr = self.expression_basis
        if expr.ndim != 3 or expr.shape[:2] != (v, 3):
            fail(f"expression_basis must be (V, 3, E) with V = {v}, got {expr.shape}")
        if self.expression_names.shape != (expr.shape[2],):
            fail(f"expression_names must be (E,) = ({expr.shape[2]},), got {self.expression_names.shape}")
        tri = self.triangles
        if tri.ndim != 2 or tri.shape[1] != 3 or not np.issubdtype(tri.dtype, np.integer):
            fail(f"triangles must be (F, 3) integers, got {tri.shape} {tri.dtype}")
        if tri.size and (tri.min() < 0 or tri.max() >= v):
            fail(f"triangle vertex indices must lie in [0, {v}), found [{tri.min()}, {tri.max()}]")
        if self.uvs is not None and self.uvs.shape != (v, 2):
            fail(f"uvs must be (V, 2) = ({v}, 2), got {self.uvs.shape}")
        for name, arr in (("mean", mean), ("shape_basis", basis), ("shape_variances", var),
                          ("expression_basis", expr), ("uvs", self.uvs)):
            if arr is not None and not np.all(np.isfinite(arr)):
                fail(f"{name} has non-finite values")
        if var.size and var.min() < 0:
            fail(f"shape_variances must be >= 0, found {var.min()}")
        bad = {key: i for key, i in self.landmarks.items() if not 0 <= int(i) < v}
        if bad:
            fail(f"landmark vertex indices out of range [0, {v}): {bad}")
        return self


def _coefficients(c, n: int, what: str) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 1 or c.size > n:
        raise ValueError(f"{what} coefficients must be (k,) with k <= {n}, got {c.shape}")
    return c


# ---------------------------------------------------------------------------------------------------
# Surrey Face Model (eos cereal binary)


class _Reader:
    """Little-endian cursor over a byte string; every read checks the remaining size first."""

    def __init__(self, data: bytes, fail):
        self.data, self.pos, self.fail = data, 0, fail

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining():
            self.fail(f"truncated: {what} needs {n} bytes, {self.remaining()} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def matrix(self, what: str) -> np.ndarray:
        """An Eigen float32 matrix as (rows, cols)."""
        rows, cols = self.scalar("i", what + " rows"), self.scalar("i", what + " cols")
        # Guard the declared size against the bytes left BEFORE allocating (a corrupt header could say 10^9).
        if rows < 0 or cols < 0 or rows * cols * 4 > self.remaining():
            self.fail(f"{what} declares {rows}x{cols} float32 but only {self.remaining()} bytes remain")
        flat = np.frombuffer(self.take(rows * cols * 4, what), dtype="<f4")
        return flat.reshape(cols, rows).T.astype(np.float32)  # column-major on disk

    def count(self, item_bytes: int, what: str) -> int:
        n = self.scalar("Q", what + " count")
        if n * item_bytes > self.remaining():
            self.fail(f"{what} declares {n} items of {item_bytes} bytes but only {self.remaining()} bytes remain")
        return n


def _read_bytes(path: Path, fail) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    if size > MAX_FILE_BYTES:
        fail(f"{size} bytes, larger than any face model")
    return path.read_bytes()


def _surrey_fail(path):
    def fail(msg):
        raise ValueError(f"{path} is not a Surrey Face Model .bin ({msg}): {_SURREY_HINT}")

    return fail


def _read_pca(r: _Reader, what: str):
    mean = r.matrix(what + " mean")
    basis = r.matrix(what + " basis")
    eig = r.matrix(what + " eigenvalues")
    n = r.count(12, what + " triangles")
    tri = np.frombuffer(r.take(n * 12, what + " triangles"), dtype="<i4").reshape(n, 3).astype(np.int32)
    return mean, basis, eig, tri


def load_surrey(path, expressions_path=None, landmarks_path=None) -> MorphableModel:
    """Load a Surrey Face Model (eos cereal .bin, e.g. ``sfm_shape_3448.bin``) -> MorphableModel.

    Args:
        path: the model .bin.
        expressions_path: eos expression blendshapes .bin; None picks up
            ``expression_blendshapes_<V>.bin`` beside the model when it exists (else E = 0).
        landmarks_path: ibug -> SFM vertex map; None picks up ``ibug_to_sfm.txt`` beside the model when it
            exists (else no landmarks).

    Raises a one-line ValueError naming the file for a wrong kind of file, truncated or corrupt content.
    """
    path = Path(path)
    fail = _surrey_fail(path)
    r = _Reader(_read_bytes(path, fail), fail)
    version = r.scalar("I", "class version")
    if version != SURREY_VERSION:
        fail(f"class version {version}, expected {SURREY_VERSION}")
    mean, basis, eig, tri = _read_pca(r, "shape")
    _read_pca(r, "colour")  # empty in the shape-only SFM files; not used
    n_uv = r.count(16, "texture coordinates")
    uvs = np.frombuffer(r.take(n_uv * 16, "texture coordinates"), dtype="<f8").reshape(n_uv, 2)
    if r.remaining():
        fail(f"{r.remaining()} unexpected trailing bytes")
    rows = mean.shape[0]
    if mean.shape[1] != 1 or rows == 0 or rows % 3:
        fail(f"shape mean must be (3V, 1), got {mean.shape}")
    if basis.shape[0] != rows or eig.shape != (basis.shape[1], 1):
        fail(f"shape basis {basis.shape} / eigenvalues {eig.shape} do not match mean {mean.shape}")
    v = rows // 3
    if n_uv not in (0, v):
        fail(f"{n_uv} texture coordinates for {v} vertices")

    if expressions_path is None:
        beside = path.with_name(EXPRESSIONS_NAME.format(v=v))
        expressions_path = beside if beside.is_file() else None
    if expressions_path is not None:
        names, offsets = load_surrey_blendshapes(expressions_path, v)  # (E,), (V, 3, E)
    else:
        names, offsets = np.zeros(0, dtype="<U1"), np.zeros((v, 3, 0), dtype=np.float32)
    if landmarks_path is None:
        beside = path.with_name(LANDMARKS_NAME)
        landmarks_path = beside if beside.is_file() else None
    landmarks = load_landmark_map(landmarks_path) if landmarks_path is not None else {}

    model = MorphableModel(
        mean=mean.reshape(v, 3),  # rows are x0, y0, z0, x1, ...
        shape_basis=np.ascontiguousarray(basis.reshape(v, 3, -1)),
        shape_variances=eig[:, 0].copy(),
        expression_basis=offsets,
        expression_names=names,
        triangles=tri,
        uvs=uvs.astype(np.float32) if n_uv else None,
        landmarks=landmarks,
        name=path.name,
    )
    return model.validate(str(path))


def load_surrey_blendshapes(path, num_vertices: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an eos expression blendshapes .bin -> (names (E,), offsets (V, 3, E) float32).

    `num_vertices` (V), when given, must match the file's vectors (3V, 1).
    """
    path = Path(path)

    def fail(msg):
        raise ValueError(f"{path} is not an eos expression blendshapes .bin ({msg}): {_BLEND_HINT}")

    r = _Reader(_read_bytes(path, fail), fail)
    # Every blendshape takes at least 8 (name length) + 8 (matrix header) bytes.
    n = r.count(16, "blendshapes")
    names, columns = [], []
    for i in range(n):
        length = r.count(1, f"blendshape {i} name")
        try:
            names.append(r.take(length, f"blendshape {i} name").decode("utf-8"))
        except UnicodeDecodeError:
            fail(f"blendshape {i} name is not UTF-8")
        vec = r.matrix(f"blendshape {i}")
        expected = (3 * num_vertices, 1) if num_vertices is not None else (columns[0].shape if columns else None)
        if vec.shape[1] != 1 or vec.shape[0] % 3 or (expected is not None and vec.shape != expected):
            fail(f"blendshape {i} is {vec.shape}, expected {expected or '(3V, 1)'}")
        columns.append(vec)
    if r.remaining():
        fail(f"{r.remaining()} unexpected trailing bytes")
    v = num_vertices if num_vertices is not None else (columns[0].shape[0] // 3 if columns else 0)
    offsets = np.concatenate(columns, axis=1) if columns else np.zeros((3 * v, 0), np.float32)  # (3V, E)
    return np.array(names, dtype=str if names else "<U1"), np.ascontiguousarray(offsets.reshape(v, 3, -1))


def load_landmark_map(path) -> dict[str, int]:
    """Read eos' ``ibug_to_sfm.txt`` -> {ibug landmark id (1-based, as a string): vertex index (0-based)}.

    The file is TOML (``[landmark_mappings]`` section, ``9 = 33  # comment``); a small line parser
    takes over when it is not valid TOML.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the landmark map ({e})") from None
    try:
        table = tomllib.loads(text).get("landmark_mappings")
    except tomllib.TOMLDecodeError:
        table = _parse_mappings(text)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: no [landmark_mappings] section in the landmark map")
    out = {}
    for key, value in table.items():
        if not str(key).isdigit() or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{path}: bad landmark mapping {key!r} = {value!r}")
        out[str(int(key))] = int(value)
    return out


def _parse_mappings(text: str) -> dict[str, int] | None:
    """Fallback for near-TOML files: ``key = int`` lines under ``[landmark_mappings]``."""
    section, out = None, {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif section == "landmark_mappings" and "=" in line:
            key, value = (s.strip().strip('"') for s in line.split("=", 1))
            try:
                out[key] = int(value)
            except ValueError:
                out[key] = value  # reported by the caller
    return out or None


# ---------------------------------------------------------------------------------------------------
# InvRender .npz


def save_npz(model: MorphableModel, path) -> None:
    """Write `model` in the documented .npz layout (see the module docstring); no pickled objects."""
    model.validate()
    keys = sorted(model.landmarks, key=lambda s: (len(s), s))
    arrays = dict(
        format_version=np.array(NPZ_FORMAT_VERSION, dtype=np.int64),
        name=np.array(model.name, dtype=str),
        mean=model.mean.astype(np.float32),
        shape_basis=model.shape_basis.astype(np.float32),
        shape_variances=model.shape_variances.astype(np.float32),
        expression_basis=model.expression_basis.astype(np.float32),
        expression_names=np.asarray(model.expression_names, dtype=str).reshape(-1),
        triangles=model.triangles.astype(np.int32),
        landmark_ids=np.array(keys, dtype=str).reshape(-1),
        landmark_vertices=np.array([model.landmarks[k] for k in keys], dtype=np.int64),
    )
    if model.uvs is not None:
        arrays["uvs"] = model.uvs.astype(np.float32)
    with open(path, "wb") as f:  # a file object keeps np.savez from appending ".npz" to the name
        np.savez(f, **arrays)


def load_npz(path) -> MorphableModel:
    """Load a model written by `save_npz` (documented layout in the module docstring)."""
    path = Path(path)

    def fail(msg):
        raise ValueError(f"{path} is not an InvRender morphable-model .npz ({msg}): {_NPZ_HINT}")

    try:
        with zipfile.ZipFile(path) as z:
            # Uncompressed sizes from the directory: refuse a zip bomb before numpy allocates anything.
            total = sum(info.file_size for info in z.infolist())
    except (OSError, zipfile.BadZipFile) as e:
        fail(f"not a zip archive: {e}")
    if total > MAX_FILE_BYTES:
        fail(f"{total} bytes uncompressed, larger than any face model")
    required = ("format_version", "mean", "shape_basis", "shape_variances", "expression_basis",
                "expression_names", "triangles", "landmark_ids", "landmark_vertices")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in required if k not in z.files]
            if missing:
                fail(f"missing arrays {missing}")
            a = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        fail(f"unreadable array: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if int(a["format_version"]) != NPZ_FORMAT_VERSION:
        fail(f"format_version {int(a['format_version'])}, expected {NPZ_FORMAT_VERSION}")
    ids, verts = a["landmark_ids"], a["landmark_vertices"]
    if ids.shape != verts.shape or ids.ndim != 1:
        fail(f"landmark_ids {ids.shape} and landmark_vertices {verts.shape} must be matching (L,)")
    model = MorphableModel(
        mean=a["mean"].astype(np.float32),
        shape_basis=a["shape_basis"].astype(np.float32),
        shape_variances=a["shape_variances"].astype(np.float32),
        expression_basis=a["expression_basis"].astype(np.float32),
        expression_names=a["expression_names"].astype(str),
        triangles=a["triangles"].astype(np.int32) if a["triangles"].dtype.kind in "iu" else a["triangles"],
        uvs=a["uvs"].astype(np.float32) if "uvs" in a else None,
        landmarks={str(k): int(v) for k, v in zip(ids.tolist(), verts.tolist(), strict=True)},
        name=str(a["name"]) if "name" in a else path.name,
    )
    return model.validate(str(path))


# ---------------------------------------------------------------------------------------------------
# Dispatch

_NOT_YET = {".mat": "BFM 2009", ".h5": "BFM 2017", ".hdf5": "BFM 2017", ".pkl": "FLAME"}


def load_model(path, expressions_path=None, landmarks_path=None) -> MorphableModel:
    """Load a morphable model by suffix/content: .bin -> `load_surrey`, .npz -> `load_npz`.

    .mat (BFM 2009), .h5 (BFM 2017) and .pkl (FLAME) raise a ValueError: not supported yet; convert the
    model to the documented .npz (`save_npz` layout). Other suffixes are sniffed: a zip is read as .npz,
    anything else as a Surrey .bin. The extra paths apply to Surrey models only.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _NOT_YET:
        raise ValueError(
            f"{path}: {_NOT_YET[suffix]} ({suffix}) support is not available yet (BFM 2009 .mat, BFM 2017 .h5 "
            "and FLAME .pkl are not read): convert the model to the documented .npz layout "
            "(invrender_core.face.morphable_model.save_npz)"
        )
    if suffix == ".npz" or (suffix != ".bin" and path.is_file() and zipfile.is_zipfile(path)):
        return load_npz(path)
    return load_surrey(path, expressions_path=expressions_path, landmarks_path=landmarks_path)
