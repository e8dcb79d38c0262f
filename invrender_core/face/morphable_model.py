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
      texture coords:   uint64 count, count*2 float64 (u right, v DOWN as in an image: flipped to v up on load)

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
      uvs                 (V, 2)    float32, v up (OpenGL/Blender), optional (absent when the model has none)
      landmark_ids        (L,)      unicode, ibug-68 ids "1".."68"
      landmark_vertices   (L,)      int64, 0-based vertex indices

- Basel Face Model 2009 (``01_MorphableModel.mat``), MATLAB 5.0 (scipy.io) or 7.3 (HDF5, h5py; the arrays
  come transposed and are turned back to MATLAB's shapes)::

      shapeMU   (3V, 1)   mean, x, y, z per vertex
      shapePC   (3V, K)   principal components (orthonormal columns)
      shapeEV   (K, 1)    STANDARD DEVIATIONS (the release's sampler: shapeMU + shapePC * (alpha .* shapeEV))
      tl        (F, 3)    triangles, 1-based MATLAB indices
      texMU, texPC, texEV, segbin   albedo model and segments: not read (MorphableModel has no albedo)

  The release is in micrometres: a mean wider than `MICROMETRE_EXTENT` (1000 units) is divided by 1000 (and
  the standard deviations with it) so that the model is in millimetres; a model already in millimetres is
  kept. No expressions (E = 0).
- Basel Face Model 2017/2019 (``model2017-1_bfm_nomouth.h5``, ``model2017-1_face12_nomouth.h5``,
  ``model2019_fullHead.h5``; statismo HDF5, h5py), millimetres::

      shape/model/mean              (3V,)     x, y, z per vertex
      shape/model/pcaBasis          (3V, K)   orthonormal columns
      shape/model/pcaVariance       (K,)      variances (statismo: mean + pcaBasis diag(sqrt(var)) alpha)
      shape/representer/cells       (3, F)    triangles, 0-based
      expression/model/{mean (3V,), pcaBasis (3V, E), pcaVariance (E,)}   optional
      shape/model/noiseVariance, shape/representer/points, color/...      not read

  The expression mean (an offset) is added to the mean, so zero coefficients give the model's mean face;
  expression_basis = expression pcaBasis * sqrt(pcaVariance) (one unit of weight = one standard deviation),
  named "Exp00", "Exp01", ...
- FLAME (``generic_model.pkl`` 2017/2020, ``flame2023.pkl``): a pickle (Python 2, read with latin-1) of a
  dict; only ``v_template`` (V, 3) metres, ``shapedirs`` (V, 3, 300 + E) metres per unit coefficient (the
  first `FLAME_SHAPE_COMPONENTS` = 300 identity, already scaled by their standard deviations, then E
  expression) and ``f`` (F, 3) 0-based are used. Read WITHOUT chumpy and without running anything in the
  file: the unpickler only builds numpy arrays, scipy.sparse matrices (kept as inert state) and chumpy
  arrays (inert stand-ins whose stored array ``x`` is taken); any other class or function is refused.
  Converted to millimetres (x 1000). Identity: the column lengths of shapedirs are the standard
  deviations, so basis = columns / lengths, variances = lengths². Expressions: shapedirs[..., 300:] in mm
  per unit weight, named "Exp00", ... FLAME's pose-driven parts (jaw, neck, eyeballs: posedirs, J_regressor,
  weights) are not read, so an open jaw is not part of this model; no UVs (they ship in a separate file).

Conventions applied by the BFM and FLAME loaders:

- Identity bases are made orthonormal (`MorphableModel` contract): columns that are orthogonal but not
  unit length are normalised and their squared lengths folded into the variances (the same shape for the
  same coefficients). A basis that is not orthogonal (off-diagonal of the normalised Gram matrix above
  `ORTHONORMAL_TOL`) is re-diagonalised by an SVD of ``basis * sqrt(var)``: same span and distribution,
  but the coefficients then follow the SVD components (decreasing variance), not the file's order.
- Triangles are wound counter-clockwise seen from outside: they are flipped when the signed volume of the
  mean mesh about its vertex centroid is negative (a face mask or head encloses its centroid).
- No landmarks are shipped with these models; ``landmarks_path`` (the ``ibug_to_sfm.txt`` TOML layout) adds
  a user's ibug -> vertex map.
"""

from __future__ import annotations

import io
import pickle
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
_BFM2009_HINT = "give 01_MorphableModel.mat from the Basel Face Model 2009 release"
_BFM2017_HINT = ("give model2017-1_bfm_nomouth.h5, model2017-1_face12_nomouth.h5 or model2019_fullHead.h5 "
                 "from the Basel Face Model 2017/2019 release")
_FLAME_HINT = "give generic_model.pkl (FLAME 2020) or flame2023.pkl from the FLAME release"
ORTHONORMAL_TOL = 1e-3  # largest |B^T B - I| (columns normalised) still taken as an orthonormal basis
MICROMETRE_EXTENT = 1000.0  # a BFM 2009 mean wider than this is in micrometres (a face is ~150 mm wide)
FLAME_SHAPE_COMPONENTS = 300  # FLAME shapedirs: 300 identity components, then the expressions


@dataclass
class MorphableModel:
    """A linear 3D morphable face model (identity PCA + expression blendshapes).

    Attributes:
        mean: (V, 3) float32 mean shape, in model units (millimetres for every loader here).
        shape_basis: (V, 3, K) float32 identity basis; flattened to (3V, K) its columns are orthonormal
            (unit length, NOT scaled by the standard deviations).
        shape_variances: (K,) float32 variance of each identity component (model units squared).
        expression_basis: (V, 3, E) float32 blendshape offsets from the mean per unit weight; E may be 0.
        expression_names: (E,) names of the blendshapes.
        triangles: (F, 3) int32 0-based vertex indices.
        uvs: (V, 2) float32 texture coordinates in [0, 1] with v UP (OpenGL/Blender: v = 1 is the texture's top
            row), or None.
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
    _check_size(path, fail)
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
        uvs=np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1).astype(np.float32) if n_uv else None,  # v down -> up
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
# Helpers shared by the BFM and FLAME loaders


def _format_fail(path: Path, kind: str, hint: str):
    def fail(msg):
        raise ValueError(f"{path} is not {kind} ({msg}): {hint}")

    return fail


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_size(path: Path, fail) -> None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    if size > MAX_FILE_BYTES:
        fail(f"{size} bytes, larger than any face model")


def _check_pca(mean: np.ndarray, basis: np.ndarray, spread: np.ndarray, names: tuple[str, str, str], fail) -> int:
    """Check a shape PCA model's mean (3V,), basis (3V, K) and per-component spread (K,) >= 0 (named as in the
    file); return 3V."""
    rows = mean.size
    if rows == 0 or rows % 3:
        fail(f"{names[0]} must be (3V,), got {mean.shape}")
    if basis.shape != (rows, spread.size):
        fail(f"{names[1]} {basis.shape} must be (3V, K) = ({rows}, {spread.size}) for {names[0]} {mean.shape} "
             f"and {names[2]} {spread.shape}")
    if spread.size and spread.min() < 0:
        fail(f"{names[2]} must be >= 0, found {spread.min()}")
    return rows


def _vector(a: np.ndarray, what: str, fail) -> np.ndarray:
    """(n,), (n, 1) or (1, n) -> (n,)."""
    if a.ndim == 1 or (a.ndim == 2 and 1 in a.shape):
        return a.reshape(-1)
    fail(f"{what} must be a vector, got {a.shape}")


def _triangle_indices(a: np.ndarray, what: str, fail) -> np.ndarray:
    """Integer-valued (F, 3) array (any numeric dtype) -> int64."""
    if a.ndim != 2 or a.shape[1] != 3:
        fail(f"{what} must be (F, 3), got {a.shape}")
    if a.dtype.kind == "f" and not np.all(a == np.round(a)):
        fail(f"{what} holds non-integer vertex indices")
    return a.astype(np.int64)


def _orthonormal_basis(basis: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite a PCA basis with orthonormal columns, keeping the model's distribution.

    Args:
        basis: (3V, K) columns b_k of the model ``mean + sum_k b_k sqrt(variances_k) c_k``, c ~ N(0, I).
        variances: (K,) >= 0.
    Returns:
        (basis (3V, K') float32 with orthonormal columns, variances (K',) float32); K' = K unless the basis
        is not orthogonal and K > 3V.
    Orthogonal columns are divided by their lengths, which are folded into the variances (the same shape for
    the same coefficients). A non-orthogonal basis (or a zero column) is re-diagonalised by an SVD of
    ``basis diag(sqrt(var))``: same span and covariance, coefficients along the SVD components.
    """
    basis = np.asarray(basis, dtype=np.float32)  # (3V, K); float32 halves the memory of BFM-size bases
    variances = np.asarray(variances, dtype=np.float64)  # (K,)
    norms = np.linalg.norm(basis, axis=0).astype(np.float64)  # (K,)
    if np.all(norms > 0):
        unit = basis / norms.astype(np.float32)  # (3V, K)
        gram = unit.T @ unit  # (K, K)
        if np.abs(gram - np.eye(gram.shape[0], dtype=np.float32)).max() <= ORTHONORMAL_TOL:
            return np.ascontiguousarray(unit), (variances * norms**2).astype(np.float32)
    u, s, _ = np.linalg.svd(basis * np.sqrt(variances).astype(np.float32), full_matrices=False)  # (3V, K'), (K',)
    return np.ascontiguousarray(u.astype(np.float32)), (s.astype(np.float64) ** 2).astype(np.float32)


def _outward_triangles(mean: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(F, 3) triangles wound counter-clockwise seen from outside.

    Flips every triangle when the signed volume of the mesh `mean` (V, 3) about its vertex centroid is
    negative: a face mask or a head encloses its centroid, so outward normals give a positive volume.
    """
    if not triangles.size:
        return triangles
    p = mean.astype(np.float64) - mean.mean(axis=0)  # (V, 3)
    a, b, c = p[triangles[:, 0]], p[triangles[:, 1]], p[triangles[:, 2]]  # (F, 3) each
    volume = np.einsum("ij,ij->", a, np.cross(b, c))  # 6x the signed volume
    return np.ascontiguousarray(triangles[:, ::-1]) if volume < 0 else triangles


def _finish(model: MorphableModel, path: Path, landmarks_path) -> MorphableModel:
    """Landmarks from the user's map, validation, outward winding."""
    if landmarks_path is not None:
        model.landmarks = load_landmark_map(landmarks_path)
    model.validate(str(path))
    model.triangles = _outward_triangles(model.mean, model.triangles)
    return model


def _h5_array(group, key: str, fail) -> np.ndarray:
    """A numeric HDF5 dataset as a numpy array; its declared size is checked before reading."""
    import h5py

    try:
        obj = group.get(key)
    except (KeyError, TypeError, ValueError):  # e.g. a dataset where a group belongs
        obj = None
    if obj is None:
        fail(f"missing {key}")
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "fiu":
        fail(f"{key} is not a numeric array")
    if obj.size * obj.dtype.itemsize > MAX_FILE_BYTES:  # compressed datasets could declare anything
        fail(f"{key} declares {obj.shape} {obj.dtype}, larger than any face model")
    try:
        return np.asarray(obj[()])
    except (OSError, ValueError) as e:
        fail(f"unreadable {key}: {_first_line(e)}")


def _open_h5(path: Path, fail):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        fail(f"not an HDF5 file: {_first_line(e)}")


# ---------------------------------------------------------------------------------------------------
# Basel Face Model 2009 (.mat)

_BFM2009_VARIABLES = ("shapeMU", "shapePC", "shapeEV", "tl")


def _read_mat5(path: Path, names, fail) -> dict[str, np.ndarray]:
    import scipy.io

    try:
        listed = {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(str(path))}
    except Exception as e:  # scipy raises many kinds on a corrupt file
        fail(f"unreadable MAT-file: {_first_line(e)}")
    missing = [name for name in names if name not in listed]
    if missing:
        fail(f"missing {', '.join(missing)}")
    for name in names:
        shape, cls = listed[name]
        if cls in ("char", "cell", "struct", "object", "function_handle", "opaque"):
            fail(f"{name} is a MATLAB {cls}, expected a numeric array")
        if int(np.prod(shape, dtype=np.int64)) * 8 > MAX_FILE_BYTES:
            fail(f"{name} declares {shape}, larger than any face model")
    try:
        mat = scipy.io.loadmat(str(path), variable_names=list(names))  # only what is used (not texPC)
    except Exception as e:
        fail(f"unreadable MAT-file: {_first_line(e)}")
    return {name: np.asarray(mat[name]) for name in names}


def _read_mat73(path: Path, names, fail) -> dict[str, np.ndarray]:
    with _open_h5(path, fail) as f:
        # MATLAB writes column-major arrays, so h5py sees them transposed: .T gives MATLAB's shapes.
        return {name: _h5_array(f, name, fail).T for name in names}


def load_bfm2009(path, landmarks_path=None) -> MorphableModel:
    """Load the Basel Face Model 2009 (``01_MorphableModel.mat``, MATLAB 5.0 or 7.3) -> MorphableModel in mm.

    Layout, units and conventions: module docstring. `landmarks_path`: an optional ibug -> vertex map
    (``ibug_to_sfm.txt`` layout). Raises a one-line ValueError naming the file for a wrong kind of file,
    missing variables or inconsistent shapes.
    """
    path = Path(path)
    fail = _format_fail(path, "a Basel Face Model 2009 .mat", _BFM2009_HINT)
    _check_size(path, fail)
    try:
        with open(path, "rb") as f:
            header = f.read(128)
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    if header.startswith(b"MATLAB 7.3"):
        a = _read_mat73(path, _BFM2009_VARIABLES, fail)
    elif header.startswith(b"MATLAB 5.0"):
        a = _read_mat5(path, _BFM2009_VARIABLES, fail)
    else:
        fail("no MATLAB 5.0 or 7.3 MAT-file header")
    for name, arr in a.items():
        if arr.dtype.kind not in "fiu":
            fail(f"{name} is {arr.dtype}, expected numbers")
    mu = _vector(a["shapeMU"], "shapeMU", fail)  # (3V,)
    std = _vector(a["shapeEV"], "shapeEV", fail).astype(np.float64)  # (K,) standard deviations
    pc = a["shapePC"]  # (3V, K)
    rows = _check_pca(mu, pc, std, ("shapeMU", "shapePC", "shapeEV (standard deviations)"), fail)
    tl = _triangle_indices(a["tl"], "tl", fail)  # (F, 3) 1-based
    if tl.size and tl.min() < 1:
        fail(f"tl must hold 1-based MATLAB indices, found {tl.min()}")
    v = rows // 3
    mean = mu.astype(np.float64).reshape(v, 3)  # x, y, z per vertex
    # The release is in micrometres (a face ~1.5e5 wide); convert so that every model is in millimetres.
    scale = 1e-3 if np.ptp(mean, axis=0).max() > MICROMETRE_EXTENT else 1.0
    basis, variances = _orthonormal_basis(pc, (std * scale) ** 2)  # (3V, K), (K,)
    model = MorphableModel(
        mean=(mean * scale).astype(np.float32),
        shape_basis=basis.reshape(v, 3, -1),
        shape_variances=variances,
        expression_basis=np.zeros((v, 3, 0), np.float32),
        expression_names=np.zeros(0, dtype="<U1"),
        triangles=(tl - 1).astype(np.int32),
        name=path.name,
    )
    return _finish(model, path, landmarks_path)


# ---------------------------------------------------------------------------------------------------
# Basel Face Model 2017/2019 (.h5)


def load_bfm2017(path, landmarks_path=None) -> MorphableModel:
    """Load a Basel Face Model 2017/2019 statismo .h5 (e.g. ``model2017-1_bfm_nomouth.h5``) -> MorphableModel.

    Layout, units and conventions: module docstring (millimetres; expression mean folded into the mean;
    expression blendshapes scaled to one standard deviation per unit weight). `landmarks_path`: an optional
    ibug -> vertex map. Raises a one-line ValueError naming the file for a wrong kind of file, missing
    datasets or inconsistent shapes.
    """
    path = Path(path)
    fail = _format_fail(path, "a Basel Face Model 2017 .h5", _BFM2017_HINT)
    _check_size(path, fail)
    with _open_h5(path, fail) as f:
        mean = _vector(_h5_array(f, "shape/model/mean", fail), "shape/model/mean", fail)  # (3V,)
        pc = _h5_array(f, "shape/model/pcaBasis", fail)  # (3V, K)
        var = _vector(_h5_array(f, "shape/model/pcaVariance", fail), "shape/model/pcaVariance", fail)  # (K,)
        cells = _h5_array(f, "shape/representer/cells", fail)  # (3, F)
        expression = None
        if "expression" in f:
            expression = tuple(_h5_array(f, f"expression/model/{k}", fail) for k in ("mean", "pcaBasis", "pcaVariance"))
    rows = _check_pca(mean, pc, var, ("shape/model/mean", "shape/model/pcaBasis", "shape/model/pcaVariance"), fail)
    if cells.ndim == 2 and cells.shape[0] == 3:
        cells = cells.T  # statismo stores (3, F)
    triangles = _triangle_indices(cells, "shape/representer/cells", fail)  # (F, 3) 0-based
    v = rows // 3
    mean = mean.astype(np.float64)  # (3V,)
    expression_basis = np.zeros((rows, 0), np.float32)  # (3V, E)
    if expression is not None:
        e_mean, e_pc, e_var = expression
        e_mean = _vector(e_mean, "expression/model/mean", fail)
        e_var = _vector(e_var, "expression/model/pcaVariance", fail).astype(np.float64)
        if e_mean.shape != (rows,) or e_pc.shape != (rows, e_var.size):
            fail(f"expression/model mean {e_mean.shape} / pcaBasis {e_pc.shape} / pcaVariance {e_var.shape} do not "
                 f"match the shape model's {rows} = 3V rows")
        if e_var.size and e_var.min() < 0:
            fail(f"expression/model/pcaVariance must be >= 0, found {e_var.min()}")
        mean = mean + e_mean  # zero coefficients = the model's mean face (the expression mean is an offset)
        expression_basis = (e_pc.astype(np.float64) * np.sqrt(e_var)).astype(np.float32)  # one unit = one std
    basis, variances = _orthonormal_basis(pc, var)  # (3V, K), (K,)
    e = expression_basis.shape[1]
    model = MorphableModel(
        mean=mean.reshape(v, 3).astype(np.float32),
        shape_basis=basis.reshape(v, 3, -1),
        shape_variances=variances,
        expression_basis=np.ascontiguousarray(expression_basis.reshape(v, 3, e)),
        expression_names=np.array([f"Exp{i:02d}" for i in range(e)], dtype=str if e else "<U1"),
        triangles=triangles.astype(np.int32),
        name=path.name,
    )
    return _finish(model, path, landmarks_path)


# ---------------------------------------------------------------------------------------------------
# FLAME (.pkl), read without chumpy and without running anything from the file


class _ChumpyArray:
    """Inert stand-in for every chumpy class: keeps the pickled state (a chumpy ``Ch`` stores its array in 'x')."""

    def __setstate__(self, state):
        self.state = state


class _SparseMatrix:
    """Inert stand-in for a pickled scipy.sparse matrix (not used by the loader): keeps its state."""

    def __setstate__(self, state):
        self.state = state


_STAND_INS = (_ChumpyArray, _SparseMatrix)


class _Refused(pickle.UnpicklingError):
    """A pickle names something the FLAME loader does not build."""


def _reconstructor(cls, base, state):
    """copyreg._reconstructor limited to the stand-ins (Python 2 pickles of new-style objects)."""
    if cls not in _STAND_INS or base is not object or state is not None:
        raise _Refused("the pickle calls copyreg._reconstructor with a class that is not allowed")
    return cls.__new__(cls)


def _numpy_globals() -> dict[str, object]:
    """The numpy callables a pickled array or scalar names, found by asking numpy how it pickles them.

    numpy 1 names them numpy.core.*, numpy 2 numpy._core.*: both spellings map to the same functions.
    """
    reconstruct = np.zeros(1).__reduce__()[0]  # multiarray._reconstruct
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numeric._frombuffer (protocol 5)
    scalar = np.float64(0).__reduce__()[0]  # multiarray.scalar
    out = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for core in ("numpy.core", "numpy._core"):
        out[f"{core}.multiarray._reconstruct"] = reconstruct
        out[f"{core}.multiarray.scalar"] = scalar
        out[f"{core}.numeric._frombuffer"] = frombuffer
    return out


_SPARSE_NAMES = {f"{f}_{kind}" for f in ("csc", "csr", "coo") for kind in ("matrix", "array")}
_BUILTINS = {"object": object, "set": set, "frozenset": frozenset, "complex": complex, "slice": slice}


class _SafeUnpickler(pickle.Unpickler):
    """Builds only numpy arrays/dtypes/scalars, inert stand-ins for chumpy and scipy.sparse, and a few builtins.

    Every global a pickle names goes through `find_class`, so nothing else can be constructed or called.
    """

    _numpy = None

    def find_class(self, module, name):
        if _SafeUnpickler._numpy is None:
            _SafeUnpickler._numpy = _numpy_globals()
        full = f"{module}.{name}"
        if full in self._numpy:
            return self._numpy[full]
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyArray
        if module.startswith("scipy.sparse") and name in _SPARSE_NAMES:
            return _SparseMatrix
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return _reconstructor
        if full == "_codecs.encode":  # Python 3 pickles (protocol < 3) write bytes as _codecs.encode(str, "latin1")
            return _latin1_encode
        raise _Refused(
            f"the pickle names {full}, which is not allowed (only numpy arrays, scipy sparse matrices and chumpy "
            "arrays are read; nothing in the file is run)"
        )

    def persistent_load(self, pid):
        raise _Refused("the pickle uses persistent ids, which are not allowed")


def _latin1_encode(text, encoding="latin1", errors="strict"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _Refused("the pickle calls _codecs.encode, which is only allowed for latin-1 text")
    return text.encode("latin1", errors)


def _flame_array(obj: dict, key: str, fail) -> np.ndarray:
    value = obj[key]
    if isinstance(value, _ChumpyArray):
        state = getattr(value, "state", None)
        value = state.get("x") if isinstance(state, dict) else None
        if not isinstance(value, np.ndarray):
            fail(f"{key} is a chumpy expression without a stored array; re-save the model with plain numpy arrays")
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        fail(f"{key} is a {type(value).__name__}, expected a numeric array")
    return value


def load_flame(path, landmarks_path=None) -> MorphableModel:
    """Load a FLAME model (``generic_model.pkl``, ``flame2023.pkl``) -> MorphableModel in millimetres.

    Read with a restricted unpickler (no chumpy needed, nothing in the file is run); layout and conventions in
    the module docstring. `landmarks_path`: an optional ibug -> vertex map. Raises a one-line ValueError naming
    the file for a wrong kind of file, a disallowed object in the pickle, missing keys or inconsistent shapes.
    """
    path = Path(path)
    fail = _format_fail(path, "a FLAME .pkl", _FLAME_HINT)
    data = _read_bytes(path, fail)  # checks the size first
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as e:
        fail(str(e))
    except Exception as e:  # a corrupt or hostile pickle raises many kinds; none of them is let through
        fail(f"unreadable pickle: {_first_line(e)}")
    if not isinstance(obj, dict):
        fail(f"the pickle holds a {type(obj).__name__}, expected a dict")
    missing = [k for k in ("v_template", "shapedirs", "f") if k not in obj]
    if missing:
        fail(f"missing {', '.join(missing)}")
    template = _flame_array(obj, "v_template", fail)  # (V, 3) metres
    dirs = _flame_array(obj, "shapedirs", fail)  # (V, 3, 300 + E) metres per unit coefficient
    if template.ndim != 2 or template.shape[1] != 3 or template.shape[0] < 1:
        fail(f"v_template must be (V, 3), got {template.shape}")
    v = template.shape[0]
    if dirs.ndim != 3 or dirs.shape[:2] != (v, 3) or dirs.shape[2] < 1:
        fail(f"shapedirs must be (V, 3, N) with V = {v}, got {dirs.shape}")
    triangles = _triangle_indices(_flame_array(obj, "f", fail), "f", fail)  # (F, 3) 0-based
    k = min(FLAME_SHAPE_COMPONENTS, dirs.shape[2])
    dirs_mm = dirs.astype(np.float64) * 1000.0  # (V, 3, N)
    # The identity columns are PCA components times their standard deviations: lengths -> variances.
    basis, variances = _orthonormal_basis(dirs_mm[..., :k].reshape(3 * v, k), np.ones(k))  # (3V, K), (K,)
    e = dirs.shape[2] - k
    model = MorphableModel(
        mean=(template.astype(np.float64) * 1000.0).astype(np.float32),
        shape_basis=basis.reshape(v, 3, -1),
        shape_variances=variances,
        expression_basis=np.ascontiguousarray(dirs_mm[..., k:].astype(np.float32)),
        expression_names=np.array([f"Exp{i:02d}" for i in range(e)], dtype=str if e else "<U1"),
        triangles=triangles.astype(np.int32),
        name=path.name,
    )
    return _finish(model, path, landmarks_path)


# ---------------------------------------------------------------------------------------------------
# Dispatch

_LOADERS_BY_SUFFIX = {".mat": load_bfm2009, ".h5": load_bfm2017, ".hdf5": load_bfm2017, ".pkl": load_flame}


def load_model(path, expressions_path=None, landmarks_path=None) -> MorphableModel:
    """Load a morphable model by suffix/content.

    .mat -> `load_bfm2009`, .h5/.hdf5 -> `load_bfm2017`, .pkl -> `load_flame`, .bin -> `load_surrey`,
    .npz -> `load_npz`. Other suffixes are sniffed: a zip is read as .npz, anything else as a Surrey .bin.
    `landmarks_path` applies to Surrey, BFM and FLAME models; `expressions_path` to Surrey models only (BFM
    2017 and FLAME carry their expressions, BFM 2009 has none).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _LOADERS_BY_SUFFIX:
        if expressions_path is not None:
            raise ValueError(f"{path}: expressions_path applies to Surrey .bin models only; leave it unset for "
                             f"{suffix} models")
        return _LOADERS_BY_SUFFIX[suffix](path, landmarks_path=landmarks_path)
    if suffix == ".npz" or (suffix != ".bin" and path.is_file() and zipfile.is_zipfile(path)):
        return load_npz(path)
    return load_surrey(path, expressions_path=expressions_path, landmarks_path=landmarks_path)
