"""COLMAP dense workspaces as training data: cameras, poses, MVS depth maps and photos, in InvRender's conventions.

A dense workspace (what `colmap image_undistorter` + `colmap patch_match_stereo` leave) looks like::

    WORKSPACE/images/NAME                              undistorted photos
    WORKSPACE/sparse/{cameras,images}.{bin,txt}        the model (also accepted under sparse/0/)
    WORKSPACE/stereo/depth_maps/NAME.geometric.bin     MVS depth (or NAME.photometric.bin)

Conventions converted here:

- COLMAP's pose (qvec = (w, x, y, z), tvec) maps world to camera, X_cam = R(q) X_world + t, in a camera frame
  with x right, y DOWN, z forward. InvRender's camera frame (DESIGN.md) has x right, y UP, z towards the
  viewer, so with F = diag(1, -1, -1): X_ours = F X_colmap, and cam_to_world = [[R^T F, -R^T t], [0, 1]].
  F is its own inverse and det(R^T F) = +1, so the result is a proper rigid transform.
- COLMAP's depth maps hold z in its camera frame, which is our planar depth (-z_ours) unchanged; values <= 0
  or not finite mean "no depth" and become 0 as in the multiview format.
- Pixel coordinates: COLMAP puts the centre of the top-left pixel at (0.5, 0.5), like `camera.py`, so fx, fy,
  cx, cy carry over unchanged; resizing scales them by the size ratios.
- Camera models: PINHOLE (fx, fy, cx, cy), SIMPLE_PINHOLE (f, cx, cy) and SIMPLE_RADIAL (f, cx, cy, k). The
  radial coefficient of SIMPLE_RADIAL is ignored by design: a dense workspace holds undistorted images (its
  cameras are PINHOLE), and a sparse model's distortion is small next to MVS noise at training resolution.
  Other models are refused with the fix (undistort the images).

Why a source and no converter to the multiview format: that format requires every ground-truth array, and
a COLMAP reconstruction has none, so converting would mean writing fake ground truth that evaluation code
could mistake for real. Instead `ColmapScenes` is a scene source that `datasets.ViewPairDataset` and
`datasets.DepthDataset` read directly (pass the workspace folder, or a `ColmapScenes`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CAMERA_MODELS",
    "ColmapCamera",
    "ColmapImage",
    "ColmapScenes",
    "ColmapWorkspace",
    "cam_to_world_from_colmap",
    "find_workspaces",
    "is_workspace",
    "qvec_to_rotmat",
    "read_array",
    "read_cameras_binary",
    "read_cameras_text",
    "read_images_binary",
    "read_images_text",
    "read_model",
    "resize_depth_nearest",
]

# COLMAP's model id -> (name, number of parameters), from colmap/src/colmap/sensor/models.h. Every model is
# listed so that a binary file with an unsupported one can still be parsed and refused by name.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
_PARAMS_BY_NAME = {name: n for name, n in CAMERA_MODELS.values()}
SUPPORTED_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL")
# COLMAP camera frame (y down, z forward) -> InvRender camera frame (y up, z towards the viewer).
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class ColmapCamera:
    """One COLMAP camera: id, model name, size in pixels and the model's parameter vector."""

    id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def __post_init__(self):
        expected = _PARAMS_BY_NAME.get(self.model)
        if expected is None:
            raise ValueError(f"unknown COLMAP camera model {self.model!r}")
        if len(self.params) != expected:
            raise ValueError(f"COLMAP camera {self.id}: model {self.model} takes {expected} parameters, "
                             f"got {len(self.params)}")

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (distortion, if any, ignored)."""
        p = self.params
        if self.model == "PINHOLE":
            fx, fy, cx, cy = p
        elif self.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL"):
            fx = fy = p[0]
            cx, cy = p[1], p[2]
        else:
            raise ValueError(f"COLMAP camera {self.id} uses the {self.model} model; only "
                             f"{', '.join(SUPPORTED_MODELS)} are supported: run `colmap image_undistorter` first")
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class ColmapImage:
    """One registered COLMAP image: id, world-to-camera pose (qvec = (w, x, y, z), tvec), camera id, file name."""

    id: int
    qvec: tuple[float, float, float, float]
    tvec: tuple[float, float, float]
    camera_id: int
    name: str

    @property
    def cam_to_world(self) -> np.ndarray:
        """(4, 4) float64 camera-to-world transform in InvRender's camera frame (x right, y up, z to the viewer)."""
        return cam_to_world_from_colmap(self.qvec, self.tvec)


def qvec_to_rotmat(qvec) -> np.ndarray:
    """Unit quaternion (w, x, y, z), shape (4,) -> (3, 3) rotation matrix (normalised first, as COLMAP does)."""
    q = np.asarray(qvec, dtype=np.float64)
    if q.shape != (4,):
        raise ValueError(f"qvec must have shape (4,), got {q.shape}")
    norm = np.linalg.norm(q)
    if not norm > 0:
        raise ValueError("qvec must be a nonzero quaternion")
    w, x, y, z = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def cam_to_world_from_colmap(qvec, tvec) -> np.ndarray:
    """COLMAP world-to-camera pose (qvec (4,), tvec (3,)) -> (4, 4) float64 cam_to_world in InvRender's frame.

    X_colmap_cam = R X_world + t and X_ours = F X_colmap_cam with F = diag(1, -1, -1), so
    cam_to_world = [[R^T F, -R^T t], [0, 0, 0, 1]] (the camera centre is -R^T t).
    """
    t = np.asarray(tvec, dtype=np.float64)
    if t.shape != (3,):
        raise ValueError(f"tvec must have shape (3,), got {t.shape}")
    r = qvec_to_rotmat(qvec)
    out = np.eye(4)
    out[:3, :3] = r.T @ _FLIP_YZ
    out[:3, 3] = -r.T @ t
    return out


# ---------- model files ----------

def _data_lines(path: Path):
    """Stripped lines of a COLMAP text file, with comments and blank lines removed, as (line number, text)."""
    try:
        text = Path(path).read_text(encoding="utf-8")  # COLMAP writes UTF-8 whatever the locale
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): export the model again") from e
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


def read_cameras_text(path: str | Path) -> dict[int, ColmapCamera]:
    """cameras.txt ("CAMERA_ID MODEL WIDTH HEIGHT PARAMS...") -> {camera id: ColmapCamera}."""
    cameras = {}
    for number, line in _data_lines(path):
        parts = line.split()
        try:
            cam = ColmapCamera(int(parts[0]), parts[1], int(parts[2]), int(parts[3]),
                               tuple(float(p) for p in parts[4:]))
        except (IndexError, ValueError) as e:
            raise ValueError(f"{path}:{number}: not a COLMAP camera line ({e})") from e
        cameras[cam.id] = cam
    return cameras


def read_images_text(path: str | Path) -> dict[int, ColmapImage]:
    """images.txt -> {image id: ColmapImage}.

    Two lines per image: "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME", then the 2D points (possibly an empty
    line, which is why blank lines are only skipped before an image line, as COLMAP's own reader does).
    """
    images = {}
    lines = Path(path).read_text().splitlines()
    k = 0
    while k < len(lines):
        line = lines[k].strip()
        k += 1
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=9)  # NAME is the rest of the line
        try:
            image = ColmapImage(int(parts[0]), tuple(float(v) for v in parts[1:5]),
                                tuple(float(v) for v in parts[5:8]), int(parts[8]), parts[9])
        except (IndexError, ValueError) as e:
            raise ValueError(f"{path}:{k}: not a COLMAP image line ({e})") from e
        images[image.id] = image
        k += 1  # the POINTS2D line
    return images


class _Reader:
    """Little-endian struct reads from bytes, with a clear error on truncation."""

    def __init__(self, data: bytes, source: Path):
        self.data, self.pos, self.source = data, 0, source

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"{self.source}: truncated COLMAP binary file")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def skip(self, size: int) -> None:
        if self.pos + size > len(self.data):
            raise ValueError(f"{self.source}: truncated COLMAP binary file")
        self.pos += size

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ValueError(f"{self.source}: truncated COLMAP binary file")
        try:
            text = self.data[self.pos:end].decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.source}: an image name is not UTF-8 ({e.reason}): rename the image and "
                             "export the model again") from e
        self.pos = end + 1
        return text


def read_cameras_binary(path: str | Path) -> dict[int, ColmapCamera]:
    """cameras.bin -> {camera id: ColmapCamera}. Layout: uint64 count, then per camera uint32 id, int32 model
    id, uint64 width, uint64 height, float64 params[n(model)]."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    cameras = {}
    for _ in range(r.read("Q")[0]):
        cam_id, model_id, width, height = r.read("IiQQ")
        if model_id not in CAMERA_MODELS:
            raise ValueError(f"{path}: unknown COLMAP camera model id {model_id}")
        name, n = CAMERA_MODELS[model_id]
        cameras[cam_id] = ColmapCamera(cam_id, name, width, height, r.read("d" * n))
    return cameras


def read_images_binary(path: str | Path) -> dict[int, ColmapImage]:
    """images.bin -> {image id: ColmapImage}. Layout: uint64 count, then per image uint32 id, float64 qvec[4],
    float64 tvec[3], uint32 camera id, NUL-terminated name, uint64 n, n x (float64 x, float64 y, int64 point id)."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    images = {}
    for _ in range(r.read("Q")[0]):
        image_id, *pose, camera_id = r.read("I7dI")
        name = r.cstring()
        r.skip(24 * r.read("Q")[0])  # the 2D points are not needed
        images[image_id] = ColmapImage(image_id, tuple(pose[:4]), tuple(pose[4:]), camera_id, name)
    return images


def read_model(sparse_dir: str | Path) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage]]:
    """Cameras and images of the COLMAP model in `sparse_dir` (binary preferred when both forms are present)."""
    sparse_dir = Path(sparse_dir)
    for ext, read_cams, read_imgs in ((".bin", read_cameras_binary, read_images_binary),
                                      (".txt", read_cameras_text, read_images_text)):
        cams, imgs = sparse_dir / f"cameras{ext}", sparse_dir / f"images{ext}"
        if cams.is_file() and imgs.is_file():
            cameras, images = read_cams(cams), read_imgs(imgs)
            for image in images.values():
                if image.camera_id not in cameras:
                    raise ValueError(f"{imgs}: image {image.name!r} refers to camera {image.camera_id}, "
                                     f"which {cams} does not define")
                try:
                    image.cam_to_world  # noqa: B018 - a pose that cannot be used fails here, naming its file
                except ValueError as e:
                    raise ValueError(f"{imgs}: image {image.name!r}: {e}") from e
            for camera in cameras.values():
                try:
                    camera.K  # noqa: B018 - an unsupported camera model fails here, naming its file
                except ValueError as e:
                    raise ValueError(f"{cams}: {e}") from e
            return cameras, images
    raise FileNotFoundError(f"no COLMAP model (cameras and images, .bin or .txt) in {sparse_dir}")


def read_array(path: str | Path) -> np.ndarray:
    """A COLMAP dense array (depth or normal map) -> float32 (H, W) or (H, W, C).

    Format: the ASCII header "width&height&channels&", then width*height*channels little-endian float32 values
    of a column-major (width, height, channels) array: x varies fastest, then y, then the channel.
    """
    path = Path(path)
    data = path.read_bytes()
    fields, pos = [], 0
    for _ in range(3):
        end = data.find(b"&", pos)
        if end < 0 or end - pos > 20:
            raise ValueError(f"{path}: not a COLMAP array (expected a 'width&height&channels&' header)")
        fields.append(data[pos:end])
        pos = end + 1
    try:
        width, height, channels = (int(f) for f in fields)
    except ValueError as e:
        raise ValueError(f"{path}: not a COLMAP array (header {b'&'.join(fields)!r})") from e
    count = width * height * channels
    if width < 1 or height < 1 or channels < 1 or len(data) - pos != 4 * count:
        raise ValueError(f"{path}: COLMAP array header says {width}x{height}x{channels} but the file holds "
                         f"{(len(data) - pos) // 4} values")
    values = np.frombuffer(data, dtype="<f4", count=count, offset=pos)
    array = values.reshape(channels, height, width).transpose(1, 2, 0)  # (H, W, C)
    return np.ascontiguousarray(array[..., 0] if channels == 1 else array, dtype=np.float32)


def resize_depth_nearest(depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W) depth -> (height, width) by nearest pixel centre: output (i, j) takes source pixel
    (floor((i + 0.5) H / height), floor((j + 0.5) W / width)).

    Nearest, not averaging, because a mean across a depth edge or a hole (0) is a depth no surface has.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {depth.shape}")
    src_h, src_w = depth.shape
    rows = np.minimum(((np.arange(height) + 0.5) * src_h / height).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * src_w / width).astype(np.int64), src_w - 1)
    return depth[rows[:, None], cols[None, :]]


# ---------- workspaces ----------

def is_workspace(path: str | Path) -> bool:
    """True when `path` looks like a COLMAP dense workspace (an images/ folder and a model under sparse/)."""
    path = Path(path)
    return (path / "images").is_dir() and any((d / f"cameras{e}").is_file() for d in (path / "sparse",
                                                                                       path / "sparse" / "0")
                                              for e in (".bin", ".txt"))


def find_workspaces(path: str | Path) -> list[Path]:
    """[path] when it is a COLMAP dense workspace (`is_workspace`), else its subfolders that are, in name order
    (none for a path that is not a folder)."""
    path = Path(path)
    if is_workspace(path):
        return [path]
    return sorted(p for p in path.iterdir() if is_workspace(p)) if path.is_dir() else []


def _read_photo(path: Path) -> np.ndarray:
    """8- or 16-bit photo -> float32 (H, W, 3) linear RGB. EXIF orientation is ignored on purpose: COLMAP's
    cameras and depth maps describe the stored pixel grid."""
    from ..io import cv2, srgb_to_linear

    raw = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION)
    if raw is None:
        raise ValueError(f"cannot read the image {path}")
    scale = 65535.0 if raw.dtype == np.uint16 else 255.0
    rgb = raw[..., ::-1].astype(np.float32) / np.float32(scale)
    return srgb_to_linear(rgb)


class ColmapWorkspace:
    """One COLMAP dense workspace: the registered images that have a depth map, in name order.

    Args:
        path: the workspace folder (see the module docstring for its layout).
        depth_type: "geometric" (COLMAP's filtered, multi-view consistent maps), "photometric", or "auto"
            (geometric where present, else photometric).

    Attributes:
        views: list of image names with a depth map, sorted; `skipped`: registered names without one.
    """

    def __init__(self, path: str | Path, depth_type: str = "auto"):
        if depth_type not in ("auto", "geometric", "photometric"):
            raise ValueError(f"depth_type must be 'auto', 'geometric' or 'photometric', got {depth_type!r}")
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no COLMAP workspace at {self.path}")
        sparse = self.path / "sparse"
        model_dir = sparse if any((sparse / f"cameras{e}").is_file() for e in (".bin", ".txt")) else sparse / "0"
        self.cameras, images = read_model(model_dir)
        self.depth_type = depth_type
        self._images = {image.name: image for image in images.values()}
        self._depth_files = {}
        self.skipped = []
        for name in sorted(self._images):
            depth_file = self._find_depth(name)
            if depth_file is None:
                self.skipped.append(name)
            else:
                self._depth_files[name] = depth_file
        self.views = sorted(self._depth_files)

    def _find_depth(self, name: str) -> Path | None:
        kinds = ("geometric", "photometric") if self.depth_type == "auto" else (self.depth_type,)
        for kind in kinds:
            candidate = self.path / "stereo" / "depth_maps" / f"{name}.{kind}.bin"
            if candidate.is_file():
                return candidate
        return None

    def camera(self, name: str, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
        """(K (3, 3), cam_to_world (4, 4), (H, W)) of a view, at `size` = (W, H) when given (K scaled)."""
        image = self._images[name]
        cam = self.cameras[image.camera_id]
        K = cam.K
        width, height = (cam.width, cam.height) if size is None else size
        K[0] *= width / cam.width  # fx, cx scale with the width (K[0, 1] is 0)
        K[1] *= height / cam.height  # fy, cy with the height
        return K, image.cam_to_world, (int(height), int(width))

    def load_view(self, name: str, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """One view's inputs at `size` = (W, H) (default: the camera's size).

        Returns image float32 (H, W, 3) linear RGB (area-resampled), depth_mvs float32 (H, W) (nearest; 0 =
        missing), K float64 (3, 3), cam_to_world float64 (4, 4).
        """
        from ..io import resize_linear

        image = self._images[name]
        cam = self.cameras[image.camera_id]
        photo = _read_photo(self.path / "images" / name)
        if photo.shape[:2] != (cam.height, cam.width):
            raise ValueError(f"{self.path / 'images' / name} is {photo.shape[1]}x{photo.shape[0]} but its COLMAP "
                             f"camera is {cam.width}x{cam.height}: use the undistorted images of this workspace")
        depth = read_array(self._depth_files[name])
        if depth.ndim != 2:
            raise ValueError(f"{self._depth_files[name]} has shape {depth.shape}, expected a one-channel depth map")
        if abs(depth.shape[1] * cam.height - depth.shape[0] * cam.width) > 0.02 * depth.shape[0] * cam.width:
            raise ValueError(f"{self._depth_files[name]} is {depth.shape[1]}x{depth.shape[0]}, not of its "
                             f"{cam.width}x{cam.height} image's shape: the depth map belongs to another image or "
                             "workspace; run colmap patch_match_stereo again")
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        K, cam_to_world, (height, width) = self.camera(name, size)
        if (height, width) != photo.shape[:2]:
            photo = resize_linear(photo, width, height)
        if depth.shape != (height, width):
            # Depth maps may be smaller than the image (patch_match_stereo --max_image_size): both cover the
            # same field of view, so resampling by pixel centres is exact up to the nearest-pixel choice.
            depth = resize_depth_nearest(depth, width, height)
        return {"image": photo.astype(np.float32), "depth_mvs": depth, "K": K, "cam_to_world": cam_to_world}


class ColmapScenes:
    """A scene source (see `datasets.SceneSource`) over COLMAP dense workspaces: one scene per workspace.

    Args:
        workspaces: a workspace folder, a folder whose subfolders are workspaces, or a list of workspace folders.
        size: (W, H) to resample every view to (K scaled accordingly), e.g. (384, 256); None keeps each
            camera's size. The networks need sides that are multiples of 16.
        depth_type: as for `ColmapWorkspace`.

    Workspaces with fewer than one view with depth are dropped; `skipped` lists (workspace, image) pairs that
    had no depth map.
    """

    def __init__(self, workspaces, size: tuple[int, int] | None = None, depth_type: str = "auto"):
        if size is not None:
            if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
                raise ValueError(f"size must be (W, H) positive integers, got {size!r}")
            size = (int(size[0]), int(size[1]))
        self.size = size
        if isinstance(workspaces, str | Path):
            root = Path(workspaces)
            paths = find_workspaces(root)
            if not paths:
                raise FileNotFoundError(f"no COLMAP dense workspace (images/ and sparse/) at or under {root}")
        else:
            paths = [Path(p) for p in workspaces]
        self.workspaces = [ColmapWorkspace(p, depth_type) for p in paths]
        self.skipped = [(ws.path, name) for ws in self.workspaces for name in ws.skipped]
        self.workspaces = [ws for ws in self.workspaces if ws.views]
        self.scenes = [(str(ws.path), list(ws.views)) for ws in self.workspaces]
        self._where = ", ".join(str(p) for p in paths)
        if not self.workspaces:
            raise ValueError(f"no registered image in {self._where} has a depth map (stereo/depth_maps/"
                             "NAME.geometric.bin): give COLMAP's dense workspace (e.g. dense/0), after "
                             "`colmap patch_match_stereo`")
        sizes = sorted({(cam.width, cam.height) for ws in self.workspaces for cam in ws.cameras.values()})
        if size is None and len(sizes) > 1:
            raise ValueError(f"the COLMAP cameras in {self._where} have different sizes "
                             f"({', '.join(f'{w}x{h}' for w, h in sizes)}): give --colmap-size W H (multiples of "
                             "16) to resample every view to one")

    def __str__(self) -> str:
        return self._where

    def camera(self, scene: int, view: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(K (3, 3) float64, cam_to_world (4, 4) float64, (H, W)) without reading the photo."""
        ws = self.workspaces[scene]
        return ws.camera(ws.views[view], self.size)

    def load(self, scene: int, view: int) -> dict[str, np.ndarray]:
        """image (H, W, 3) float32 linear, depth_mvs (H, W) float32, K (3, 3), cam_to_world (4, 4)."""
        ws = self.workspaces[scene]
        return ws.load_view(ws.views[view], self.size)

    def describe(self, scene: int, view: int) -> str:
        ws = self.workspaces[scene]
        return f"{ws.path}/images/{ws.views[view]}"

