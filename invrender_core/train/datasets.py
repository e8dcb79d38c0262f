"""Torch datasets for training and evaluating the networks on multiview data.

Data comes from a *scene source*: `MultiviewScenes` reads the project's rendered format (`train/data.py`), and
`colmap.ColmapScenes` reads COLMAP dense workspaces. Datasets accept either a folder (the kind is detected:
`scene_*/scene.json` is the multiview format, `images/` + `sparse/` a COLMAP workspace) or a source object.

- `ViewPairDataset`: pairs of overlapping views of one scene, for the self-supervised losses (InverseRenderNet).
- `DepthDataset`: single views with MVS depth, for the depth network.
- `EvalViews`: held-out views WITH ground truth, for evaluation only.

The training datasets never read ground truth (sources only load the input arrays). Their masks come from
the inputs: `valid` = the view has MVS depth there, `sky` = `sky_from_mvs` (no depth above all of the column's
depth), an estimate, not the ground-truth sky mask.

Randomness (partner view, crop offsets, flip, exposure) is a pure function of (seed, epoch, index): call
`set_epoch(epoch)` before each epoch (the trainer does). Results are then independent of the DataLoader's
worker count and of resuming mid-epoch.

Tensors are float32 and channel-first: images (3, H, W) LINEAR RGB (the uint8 sRGB photo decoded), depth and
masks (1, H, W), K (3, 3), cam_to_world (4, 4) in DESIGN.md's camera frame (x right, y up, z towards the viewer).
Views of one batch must share a size: pass `crop` when a dataset mixes sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..io import srgb_lut
from .data import SECOND_LIGHT_PHOTO, list_scenes, read_view

__all__ = [
    "DepthDataset",
    "EvalViews",
    "MultiviewScenes",
    "SceneSource",
    "ViewPairDataset",
    "decode_srgb8",
    "flip_camera",
    "frustum_overlap",
    "open_source",
    "sky_from_mvs",
]

# sRGB decode table for uint8 photos: exact for every code and much faster than the formula per pixel.
_SRGB8_TO_LINEAR = srgb_lut(8)  # (256,) float32: the linear value of every 8-bit code
# Mirror of the x axis, applied to both the camera frame and the world frame by horizontal flips.
_MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])


class SceneSource(Protocol):
    """What the datasets need from a collection of scenes (duck-typed; `MultiviewScenes`, `ColmapScenes`).

    `scenes` lists (scene name, [view names]); views are addressed by (scene index, view index).
    """

    scenes: list[tuple[str, list[str]]]

    def camera(self, scene: int, view: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(K (3, 3) float64, cam_to_world (4, 4) float64, (H, W)), cheaply (without the photo)."""

    def load(self, scene: int, view: int) -> dict[str, np.ndarray]:
        """image float32 (H, W, 3) linear RGB, depth_mvs float32 (H, W) (0 = missing), K, cam_to_world."""

    def describe(self, scene: int, view: int) -> str:
        """A human-readable name of the view (its file), for error messages."""


def decode_srgb8(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) sRGB photo -> float32 (H, W, 3) linear RGB in [0, 1]."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    return _SRGB8_TO_LINEAR[image]


class MultiviewScenes:
    """Scene source over the multiview format (`train/data.py`): the scenes of one split, input arrays only.

    Args:
        root: dataset folder holding scene_*/scene.json.
        split: "train" or "heldout".
    """

    def __init__(self, root: str | Path, split: str = "train"):
        self.root, self.split = Path(root), split
        entries = list_scenes(self.root, split)
        self._dirs = [scene_dir for scene_dir, _ in entries]
        self._sizes = [(int(meta["height"]), int(meta["width"])) for _, meta in entries]
        self.scenes = [(scene_dir.name, list(meta["views"])) for scene_dir, meta in entries]
        self._cameras: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _path(self, scene: int, view: int) -> Path:
        return self._dirs[scene] / self.scenes[scene][1][view]

    def camera(self, scene: int, view: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        key = (scene, view)
        if key not in self._cameras:
            # Members of an .npz decompress one at a time: reading K and the pose skips the photo and depth.
            with np.load(self._path(scene, view), allow_pickle=False) as z:
                self._cameras[key] = (z["K"].astype(np.float64), z["cam_to_world"].astype(np.float64))
        K, cam_to_world = self._cameras[key]
        return K.copy(), cam_to_world.copy(), self._sizes[scene]

    def load(self, scene: int, view: int, second_light: bool = False) -> dict[str, np.ndarray]:
        """The view's inputs; with `second_light`, also `second_light_image` (float32 linear, the photo under the
        dataset's second light) when the view has one."""
        path = self._path(scene, view)
        arrays = read_view(path, second_light=second_light)  # inputs only: ground truth is not even read
        image, depth = arrays["image"], arrays["depth_mvs"]
        if image.ndim != 3 or depth.shape != image.shape[:2]:
            raise ValueError(f"{path}: image {image.shape} and depth_mvs {depth.shape} do not match; "
                             "re-render the view")
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        loaded = {"image": decode_srgb8(image), "depth_mvs": depth, "K": arrays["K"].astype(np.float64),
                  "cam_to_world": arrays["cam_to_world"].astype(np.float64)}
        if SECOND_LIGHT_PHOTO in arrays:
            loaded["second_light_image"] = decode_srgb8(arrays[SECOND_LIGHT_PHOTO])
        return loaded

    def describe(self, scene: int, view: int) -> str:
        return str(self._path(scene, view))


def open_source(data, split: str = "train") -> SceneSource:
    """A scene source from a folder (multiview dataset or COLMAP workspace(s)) or an existing source object.

    COLMAP workspaces have no held-out split: asking for any split but "train" from one is an error. A COLMAP
    folder opened here keeps each camera's size; build `colmap.ColmapScenes(path, size=(W, H))` to resample.
    """
    if not isinstance(data, str | Path):
        missing = [name for name in ("scenes", "camera", "load", "describe") if not hasattr(data, name)]
        if missing:
            raise TypeError(f"{type(data).__name__} is neither a folder nor a scene source (lacks {missing})")
        return data
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"no dataset folder at {root}")
    if any(root.glob("scene_*/scene.json")):
        return MultiviewScenes(root, split)
    from . import colmap

    if colmap.find_workspaces(root):
        if split != "train":
            raise ValueError(f"{root} is a COLMAP workspace, which has no {split!r} split; evaluate on a "
                             "rendered multiview dataset instead")
        return colmap.ColmapScenes(root)
    raise FileNotFoundError(f"{root} holds neither a multiview dataset (scene_*/scene.json) nor a COLMAP "
                            "workspace (images/ and sparse/)")


def sky_from_mvs(depth_mvs: np.ndarray) -> np.ndarray:
    """Estimated sky (H, W) bool from MVS depth (H, W): pixels without depth above every pixel with depth in
    their column (a column without any depth is all sky).

    Outdoors the sky lies above all geometry, and MVS has no depth there. MVS also misses texture-less surfaces
    (walls, pavement), but those sit below some detected edge or texture of their column, so they stay
    unmarked; the rule only errs on surfaces whose top part is texture-less up to the image's top edge. An
    input-only estimate, never the ground truth. (Flood-filling the holes from the top edge instead marks
    about 30 % of the rendered views' surfaces as sky, because MVS holes connect to the sky.)
    """
    depth_mvs = np.asarray(depth_mvs)
    if depth_mvs.ndim != 2:
        raise ValueError(f"depth_mvs must have shape (H, W), got {depth_mvs.shape}")
    valid = np.isfinite(depth_mvs) & (depth_mvs > 0)
    h = valid.shape[0]
    first = np.where(valid.any(axis=0), valid.argmax(axis=0), h)  # (W,) first row with depth, per column
    return np.arange(h)[:, None] < first[None, :]


def frustum_overlap(depth_i: np.ndarray, K_i: np.ndarray, cam_to_world_i: np.ndarray, K_j: np.ndarray,
                    cam_to_world_j: np.ndarray, size_j: tuple[int, int], stride: int = 4) -> float:
    """Fraction of view i's MVS points (every stride-th pixel) that land inside view j's image, in front of it.

    depth_i (H, W) planar depth (0 = missing); K (3, 3); cam_to_world (4, 4); size_j = (H_j, W_j). Occlusion is
    not tested, so this is an upper bound of the co-visible fraction. 0 when view i has no depth.
    """
    depth_i = np.asarray(depth_i, dtype=np.float64)
    if depth_i.ndim != 2:
        raise ValueError(f"depth_i must have shape (H, W), got {depth_i.shape}")
    for name, m, shape in (("K_i", K_i, (3, 3)), ("K_j", K_j, (3, 3)), ("cam_to_world_i", cam_to_world_i, (4, 4)),
                           ("cam_to_world_j", cam_to_world_j, (4, 4))):
        if np.shape(m) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {np.shape(m)}")
    rows, cols = np.mgrid[0:depth_i.shape[0]:stride, 0:depth_i.shape[1]:stride]
    d = depth_i[rows, cols]
    ok = np.isfinite(d) & (d > 0)
    if not ok.any():
        return 0.0
    pix = np.stack([cols[ok] + 0.5, rows[ok] + 0.5, np.ones(ok.sum())])  # (3, N) homogeneous pixel centres
    flip = np.array([[1.0], [-1.0], [-1.0]])  # K acts on (x, -y, -z)
    points = flip * (np.linalg.solve(K_i, pix) * d[ok])  # (3, N) camera frame of i
    i_to_j = np.linalg.inv(cam_to_world_j) @ cam_to_world_i
    hom = np.asarray(K_j) @ (flip * (i_to_j[:3, :3] @ points + i_to_j[:3, 3:]))  # (3, N); row 2 = depth in j
    z = hom[2]
    front = z > 1e-9
    u = np.where(front, hom[0] / np.where(front, z, 1.0), -1.0)
    v = np.where(front, hom[1] / np.where(front, z, 1.0), -1.0)
    inside = front & (u >= 0) & (u < size_j[1]) & (v >= 0) & (v < size_j[0])
    return float(inside.mean())


def flip_camera(K: np.ndarray, cam_to_world: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera of the horizontally flipped image: K (3, 3) -> cx' = width - cx; cam_to_world (4, 4) -> M T M.

    M = diag(-1, 1, 1, 1) mirrors the camera's x axis AND the world's x axis, so the result is still a proper
    rigid transform (det +1) and a point X seen at pixel u is seen at width - u as the mirrored point M X. Views
    of one pair must be flipped together (they then share the mirrored world).
    """
    K, cam_to_world = np.asarray(K, dtype=np.float64), np.asarray(cam_to_world, dtype=np.float64)
    if K.shape != (3, 3) or cam_to_world.shape != (4, 4):
        raise ValueError(f"K must have shape (3, 3) and cam_to_world (4, 4), got {K.shape} and {cam_to_world.shape}")
    K = K.copy()
    K[0, 2] = width - K[0, 2]
    return K, _MIRROR_X @ cam_to_world @ _MIRROR_X


def _check_crop(crop) -> tuple[int, int] | None:
    if crop is None:
        return None
    if len(crop) != 2 or any(int(c) != c or c < 1 for c in crop):
        raise ValueError(f"crop must be (height, width) positive integers, got {crop!r}")
    return int(crop[0]), int(crop[1])


def _crop_offset(size: tuple[int, int], crop: tuple[int, int] | None, rng, random: bool, where: str):
    """(row, col) of the crop's top-left corner: uniform when `random`, else centred."""
    if crop is None:
        return 0, 0
    (h, w), (ch, cw) = size, crop
    if ch > h or cw > w:
        raise ValueError(f"crop (height, width) = {crop} is larger than {where} ({h}x{w}); choose a smaller crop")
    if random:
        return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    return (h - ch) // 2, (w - cw) // 2


def _view_tensors(view: dict, offset: tuple[int, int], crop, flip: bool, gain: float) -> dict[str, torch.Tensor]:
    """Crop, flip and expose one loaded view; numpy (H, W, ...) -> float32 channel-first tensors."""
    image, depth = view["image"], view["depth_mvs"]
    sky = sky_from_mvs(depth)  # before cropping: a crop may cut off the geometry that bounds the sky
    K, cam_to_world = view["K"].copy(), view["cam_to_world"]
    if crop is not None:
        (r, c), (ch, cw) = offset, crop
        image, depth, sky = image[r:r + ch, c:c + cw], depth[r:r + ch, c:c + cw], sky[r:r + ch, c:c + cw]
        K[0, 2] -= c  # the principal point moves with the crop's corner
        K[1, 2] -= r
    if flip:
        image, depth, sky = image[:, ::-1], depth[:, ::-1], sky[:, ::-1]
        K, cam_to_world = flip_camera(K, cam_to_world, image.shape[1])
    if gain != 1.0:
        image = np.clip(image * np.float32(gain), 0.0, 1.0)  # a brighter exposure saturates like a sensor
    valid = depth > 0
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),  # (3, H, W)
        "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None],  # (1, H, W)
        "valid": torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32))[None],
        "sky": torch.from_numpy(np.ascontiguousarray(sky, dtype=np.float32))[None],
        "K": torch.from_numpy(K.astype(np.float32)),
        "cam_to_world": torch.from_numpy(np.asarray(cam_to_world, dtype=np.float32)),
    }


class _AugmentedViews(torch.utils.data.Dataset):
    """Shared parts: the source, the (scene, view) index, crop/augmentation settings and the epoch."""

    def __init__(self, data, split: str, crop, seed: int, augment: bool, flip: bool, max_gain: float):
        self.source = open_source(data, split)
        self.crop = _check_crop(crop)
        if not max_gain >= 1.0:
            raise ValueError(f"max_gain must be >= 1 (1 = no exposure augmentation), got {max_gain!r}")
        self.seed, self.augment, self.flip, self.max_gain = int(seed), bool(augment), bool(flip), float(max_gain)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices __getitem__ makes (the trainer calls this every epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _flip_and_gain(self, rng) -> tuple[bool, float]:
        flip = self.augment and self.flip and bool(rng.random() < 0.5)
        log_gain = math.log(self.max_gain)
        gain = math.exp(rng.uniform(-log_gain, log_gain)) if self.augment and log_gain > 0 else 1.0
        return flip, gain


class ViewPairDataset(_AugmentedViews):
    """Pairs (view i, another view j of the same scene) for the multiview self-supervised losses.

    Item `index` takes view i = the index-th view of the split (scenes in order, views in order) and draws j
    among the scene's other views in a random order, taking the first whose `frustum_overlap` with i is at
    least `min_overlap` (the most overlapping one when none is). Scenes with a single view are left out.

    Args:
        data: multiview dataset folder, COLMAP workspace folder, or a scene source (`open_source`).
        split: "train" or "heldout" (multiview data only).
        crop: (height, width) crop taken from each view (random offset when augmenting, else centred), with
            K's principal point shifted accordingly; None keeps the full views.
        seed: base of the per-item random choices (with the epoch and the index).
        augment: random crop offsets, horizontal flips of both views together (K and poses mirrored
            consistently, see `flip_camera`) and one exposure gain in [1/max_gain, max_gain] for both views
            (linear images are multiplied, then clipped to [0, 1]).
        min_overlap: see above, in [0, 1].
        flip, max_gain: switch off flips / set the exposure range (1 = off) within `augment`.
        second_light: probability in [0, 1] that an item pairs view i with itself under the dataset's second
            light (views with a `relight_image`, `render_multiview.py --second-light`), the only pairs in which
            shading and shadows differ while the albedo is the same; other items (and views without a second
            photo) pair two views under the same light.

    Item (dict of tensors; X is i or j): image_X (3, H, W) float32 linear RGB; depth_X (1, H, W) float32 MVS
    depth, 0 = missing; valid_X (1, H, W) float32 1 where depth_X > 0; sky_X (1, H, W) float32 `sky_from_mvs`;
    K_X (3, 3) float32; cam_to_world_X (4, 4) float32; scene, view_i, view_j, flipped: int64 scalars;
    same_light: float32 scalar, 1 when both photos share one light.
    """

    def __init__(self, data, split: str = "train", crop: tuple[int, int] | None = None, seed: int = 0,
                 augment: bool = True, min_overlap: float = 0.25, flip: bool = True, max_gain: float = 1.25,
                 second_light: float = 0.0):
        super().__init__(data, split, crop, seed, augment, flip, max_gain)
        if not 0.0 <= min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap!r}")
        if not 0.0 <= second_light <= 1.0:
            raise ValueError(f"second_light must be in [0, 1], got {second_light!r}")
        if second_light > 0 and not isinstance(self.source, MultiviewScenes):
            raise ValueError("second_light needs a multiview dataset whose views have a second photo "
                             "(render_multiview.py --second-light); a COLMAP capture has none")
        self.min_overlap, self.second_light = float(min_overlap), float(second_light)
        self.items = [(s, v) for s, (_, views) in enumerate(self.source.scenes) if len(views) >= 2
                      for v in range(len(views))]
        if not self.items:
            raise ValueError(f"no scene of the {split!r} split has two or more views: pairs need at least two")

    def __len__(self) -> int:
        return len(self.items)

    def partner(self, index: int, depth_i: np.ndarray, rng: np.random.Generator) -> int:
        """View j (index within the scene) for item `index`, given view i's MVS depth (H, W); consumes rng."""
        scene, view_i = self.items[index]
        others = [v for v in range(len(self.source.scenes[scene][1])) if v != view_i]
        order = [others[k] for k in rng.permutation(len(others))]
        K_i, c2w_i, _ = self.source.camera(scene, view_i)
        best, best_overlap = order[0], -1.0
        for view_j in order:
            K_j, c2w_j, size_j = self.source.camera(scene, view_j)
            overlap = frustum_overlap(depth_i, K_i, c2w_i, K_j, c2w_j, size_j)
            if overlap >= self.min_overlap:
                return view_j
            if overlap > best_overlap:
                best, best_overlap = view_j, overlap
        return best

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self.items):
            raise IndexError(f"pair index {index} out of range for {len(self.items)} items")
        rng = self._rng(index)
        scene, view_i = self.items[index]
        wants_other_light = self.second_light > 0 and rng.random() < self.second_light
        # Asked only then: other sources' load takes no second_light (the constructor refuses them).
        first = (self.source.load(scene, view_i, second_light=True) if wants_other_light
                 else self.source.load(scene, view_i))
        other_light = "second_light_image" in first  # views without a second photo pair under one light
        if other_light:
            view_j, second = view_i, {**first, "image": first["second_light_image"]}
        else:
            view_j = self.partner(index, first["depth_mvs"], rng)
            second = self.source.load(scene, view_j)
        flip, gain = self._flip_and_gain(rng)
        item = {}
        for suffix, view, v in (("i", first, view_i), ("j", second, view_j)):
            offset = _crop_offset(view["depth_mvs"].shape, self.crop, rng, self.augment,
                                  self.source.describe(scene, v))
            for key, value in _view_tensors(view, offset, self.crop, flip, gain).items():
                item[f"{key}_{suffix}"] = value
        item.update(scene=torch.tensor(scene), view_i=torch.tensor(view_i), view_j=torch.tensor(view_j),
                    flipped=torch.tensor(int(flip)), same_light=torch.tensor(0.0 if other_light else 1.0))
        return item


class DepthDataset(_AugmentedViews):
    """Single views with their MVS depth, for the depth network.

    Args: as `ViewPairDataset` (without min_overlap); augmentation flips each view independently and scales its
    exposure.

    Item: image (3, H, W) float32 linear RGB; depth (1, H, W) float32 MVS depth (0 = missing); mask (1, H, W)
    float32, 1 where depth > 0; sky (1, H, W) float32 `sky_from_mvs`; scene, view: int64 scalars.
    """

    def __init__(self, data, split: str = "train", crop: tuple[int, int] | None = None, seed: int = 0,
                 augment: bool = True, flip: bool = True, max_gain: float = 1.25):
        super().__init__(data, split, crop, seed, augment, flip, max_gain)
        self.items = [(s, v) for s, (_, views) in enumerate(self.source.scenes) for v in range(len(views))]
        if not self.items:
            raise ValueError(f"no views in the {split!r} split of {data}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self.items):
            raise IndexError(f"view index {index} out of range for {len(self.items)} items")
        rng = self._rng(index)
        scene, view = self.items[index]
        arrays = self.source.load(scene, view)
        flip, gain = self._flip_and_gain(rng)
        offset = _crop_offset(arrays["depth_mvs"].shape, self.crop, rng, self.augment,
                              self.source.describe(scene, view))
        t = _view_tensors(arrays, offset, self.crop, flip, gain)
        return {"image": t["image"], "depth": t["depth"], "mask": t["valid"], "sky": t["sky"],
                "scene": torch.tensor(scene), "view": torch.tensor(view)}


class EvalViews(Sequence):
    """Views of a multiview dataset split WITH ground truth, for evaluation scripts (never for training).

    Args:
        root: multiview dataset folder.
        split: "heldout" (default) or "train".
        max_views: keep only this many views, spread evenly over the split (None = all).

    Item (numpy, DESIGN.md layouts): name "scene_xxxxx/view_yy.npz"; image float32 (H, W, 3) linear RGB;
    depth_mvs float32 (H, W); K float64 (3, 3); cam_to_world float64 (4, 4); exposure float32 ();
    gt_depth float32 (H, W); gt_normal, gt_albedo float32 (H, W, 3); gt_shadow float32 (H, W);
    sky_mask bool (H, W); gt_sh_camera float32 (9, 3).
    """

    def __init__(self, root: str | Path, split: str = "heldout", max_views: int | None = None):
        self.root = Path(root)
        paths = [scene_dir / view for scene_dir, meta in list_scenes(self.root, split) for view in meta["views"]]
        if max_views is not None:
            if int(max_views) != max_views or max_views < 1:
                raise ValueError(f"max_views must be a positive integer or None, got {max_views!r}")
            if len(paths) > max_views:
                paths = [paths[k] for k in np.linspace(0, len(paths) - 1, int(max_views)).round().astype(int)]
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        path = self.paths[index]
        arrays = read_view(path, ground_truth=True)
        out = {"name": f"{path.parent.name}/{path.name}", "image": decode_srgb8(arrays.pop("image"))}
        for key, value in arrays.items():
            out[key] = value.astype(np.float32) if value.dtype == np.float16 else value
        return out
