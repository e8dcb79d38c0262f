"""`invrender train face`: the face correspondence network on faces rendered from the user's morphable model,
optionally adapted to unlabelled real footage.

    invrender train face --data path/to/sfm_shape_3448.bin --out runs/face_corr --steps 3000 --batch-size 12
    invrender train face --data sfm_shape_3448.bin --out runs/face_adapt --init runs/face_corr/model.safetensors \
        --real-frames my_videos/ --steps 500

The training faces are generated on the fly (`face.synthetic.SyntheticFaces`, deterministic in seed and
index), so nothing is written but the run folder. Held-out faces use another seed. `evaluate` reports the mean
template error in model units (millimetres for the Surrey model) on face pixels and the mask IoU, against the
trivial answer (the mean template coordinate everywhere the true mask is).

Self-supervised adaptation (Koizumi & Smith's idea; `--real-frames`): every batch also holds real face crops
(tracked in the given videos, images or folders; no labels). The network's own output on them goes through
the least-squares fit (`face.fit.fit_frame`, robust, with the model's priors); the fitted model, rasterised in
the crop, says which template point each pixel should see. The distance between the network's template
coordinates and the fitted model's (the fit's residual, in template space) is the real crops' loss, on the
pixels both call face. The synthetic loss stays in every batch, so the network does not drift from the truth
where the labels are exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..camera import Camera
from ..face import fit, pipeline, video
from ..face.morphable_model import MorphableModel, load_model
from ..face.render import SurfaceLookup, rasterize
from ..face.synthetic import SyntheticFaces
from ..nets.face_corr import (
    DEFAULT_SIZE,
    DEFAULT_WIDTH,
    FaceCorrespondenceNet,
    correspondence_loss,
    output_to_numpy,
)

TRAIN_SAMPLES = 1_000_000  # virtual: a sample is rendered when asked for
HELDOUT_SEED = 1_000_003
MAX_REAL_CROPS = 600  # real crops kept in memory for adaptation (spread over the given footage)
MIN_FIT_POINTS = 50  # a real crop whose prediction has fewer usable correspondences gets no pseudo-label
# Correspondences from a real crop's prediction: 800 per crop, pixels the network is fairly sure of.
PSEUDO_LABEL_SETTINGS = pipeline.FaceSettings(max_points=800, min_confidence=0.2)


def real_face_crops(paths, size: int, max_crops: int = MAX_REAL_CROPS) -> np.ndarray:
    """(N, size, size, 3) uint8 head crops tracked in videos, images or folders of frames (`face.video`),
    at most `max_crops`, spread evenly over all the footage. Inputs without a detected face are skipped."""
    paths = [Path(p) for p in paths]
    expanded = []
    for path in paths:  # a folder of videos counts as its videos; a folder of images as one clip
        videos = sorted(p for p in path.iterdir() if p.suffix.lower() in video.VIDEO_SUFFIXES) if path.is_dir() else []
        expanded.extend(videos or [path])
    per_input = max(1, max_crops // max(len(expanded), 1))
    crops = []
    for path in expanded:
        source = video.open_source(path)
        step = max(1, len(source.frames) // per_input)
        source = video.open_source(path, step=step)
        with video.iter_frames(source) as reader:
            frames = [rgb for _, rgb in reader]
        try:
            boxes = video.track_faces(frames, require_face=True, source_name=str(path))
        except ValueError:
            continue
        crops.extend(video.crop(rgb, box, size)[0] for rgb, box in zip(frames, boxes, strict=True))
    if not crops:
        raise ValueError(f"no face found in {', '.join(map(str, paths))}: give videos or images of faces for "
                         "--real-frames")
    return np.stack(crops[:max_crops])


def pseudo_labels(model: MorphableModel, lookup: SurfaceLookup, template: np.ndarray, mask: np.ndarray,
                  confidence: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Template coordinates (S, S, 3) and face mask (S, S) of the model fitted to one crop's prediction
    (template (S, S, 3), mask and confidence (S, S)); an all-False mask when the fit has too little to go on."""
    size = template.shape[0]
    empty = (np.zeros((size, size, 3), np.float32), np.zeros((size, size), bool))
    whole_crop = video.FaceBox(0.0, 0.0, float(size), 0.0, False)  # crop pixels are the fit's pixels
    corr = pipeline.correspondences_from_prediction(template, mask, confidence, whole_crop, None, lookup,
                                                    PSEUDO_LABEL_SETTINGS, rng)
    if len(corr) < MIN_FIT_POINTS:
        return empty
    try:
        fitted = fit.fit_frame(model, corr, (size, size), identity_weight=30.0, expression_weight=30.0)
    except (ValueError, np.linalg.LinAlgError):
        return empty
    camera = Camera(size, size, fitted.focal, fitted.focal, size / 2, size / 2)
    raster = rasterize(fitted.camera_vertices(model), model.triangles, camera)
    labels = raster.interpolate(lookup.frame.normalise(model.mean), model.triangles).astype(np.float32)
    return labels, raster.mask


def _as_input(image_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image_u8.transpose(2, 0, 1).astype(np.float32) / 255.0)


class SyntheticFaceCrops(torch.utils.data.Dataset):
    """Items: image (3, S, S) float in [0, 1] (sRGB), template (3, S, S), mask (1, S, S) in {0, 1}; with real
    crops (N, S, S, 3) uint8 also real_image (3, S, S), the real crop index % N."""

    def __init__(self, faces: SyntheticFaces, length: int = TRAIN_SAMPLES, real_crops: np.ndarray | None = None):
        self.faces, self.length, self.real_crops = faces, int(length), real_crops

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.faces.sample(index)
        item = {"image": _as_input(s["image"]),
                "template": torch.from_numpy(s["template"].transpose(2, 0, 1).copy()),
                "mask": torch.from_numpy(s["mask"][None].astype(np.float32))}
        if self.real_crops is not None:
            item["real_image"] = _as_input(self.real_crops[index % len(self.real_crops)])
        return item


def evaluate(model: FaceCorrespondenceNet, faces: SyntheticFaces, count: int = 64) -> dict[str, float]:
    """Held-out scores on `count` faces: template error (model units) where the face is truly visible and
    predicted as face, the same for the trivial mean-template answer, and the mask IoU."""
    errors, trivial, inter, union = [], [], 0, 0
    scale = faces.frame.scale
    mean_template = np.zeros(3)  # the mean shape's centre, in template coordinates
    for k in range(count):
        s = faces.sample(k)
        pred = model.predict(s["image"][None])
        mask, pmask = s["mask"], pred["mask"][0] > 0.5
        inter += int((mask & pmask).sum())
        union += int((mask | pmask).sum())
        both = mask & pmask
        if both.any():
            errors.append(np.linalg.norm(pred["template"][0][both] - s["template"][both], axis=1).mean() * scale)
        trivial.append(np.linalg.norm(s["template"][mask] - mean_template, axis=1).mean() * scale)
    return {"template_error": float(np.mean(errors)) if errors else float("nan"),
            "template_error_trivial": float(np.mean(trivial)), "mask_iou": inter / max(union, 1)}


class FaceTask:
    """The trainer's task for the correspondence network (data = the morphable model file)."""

    default_lr = 2e-3

    def __init__(self, data, width: float = DEFAULT_WIDTH, seed: int = 0, size: int = DEFAULT_SIZE,
                 eval_count: int = 32, real_frames=None, real_weight: float = 1.0):
        self.face_model = load_model(data)
        self.model = FaceCorrespondenceNet(width=width, size=int(size))  # the net checks width
        self.faces = SyntheticFaces(self.face_model, size=int(size), seed=int(seed))
        self.heldout = SyntheticFaces(self.face_model, size=int(size), seed=HELDOUT_SEED)
        self.eval_count = int(eval_count)
        self.real_crops = real_face_crops(real_frames, int(size)) if real_frames else None
        self.real_weight = float(real_weight)
        self.lookup = SurfaceLookup(self.face_model.mean, self.face_model.triangles)
        self.mirror_x = pipeline.mirror_plane(self.lookup.frame, fit.mirror_vertices(self.face_model.mean))
        self.rng = np.random.default_rng(seed)

    def make_dataset(self) -> SyntheticFaceCrops:
        return SyntheticFaceCrops(self.faces, real_crops=self.real_crops)

    def compute_losses(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = correspondence_loss(model(batch["image"]).float(), batch["template"], batch["mask"])
        if "real_image" in batch:
            real = batch["real_image"]
            mirrored = None
            if self.mirror_x is not None:
                with torch.no_grad():
                    mirrored = model(real.flip(3)).float()
            losses["real"] = self.real_weight * self.real_loss(model(real).float(), mirrored)
        return {"total": sum(losses.values()), **losses}

    def real_loss(self, out: torch.Tensor, mirrored: torch.Tensor | None = None) -> torch.Tensor:
        """Mean L1 template distance between the network's output (B, 5, S, S) on real crops and the model fitted
        to that very output (`pseudo_labels`), on the pixels both call face. With `mirrored`, its output on the
        mirror images of the crops, the fit sees the average of the two (`pipeline.mirror_average`), as the
        face tool does."""
        pred = output_to_numpy(out)
        if mirrored is not None:
            pred = pipeline.mirror_average(pred, output_to_numpy(mirrored), self.mirror_x)
        labels, label_masks = zip(*(pseudo_labels(self.face_model, self.lookup, pred["template"][b],
                                                  pred["mask"][b], pred["confidence"][b], self.rng)
                                    for b in range(len(out))), strict=True)
        target = torch.from_numpy(np.stack(labels).transpose(0, 3, 1, 2)).to(out.device)
        use = torch.from_numpy(np.stack(label_masks)[:, None]).to(out.device) & (torch.sigmoid(out[:, 3:4]) > 0.5)
        error = (out[:, :3] - target).abs().sum(1, keepdim=True)
        return (error * use).sum() / use.sum().clamp(min=1.0)

    def evaluate(self, model) -> dict[str, float]:
        return evaluate(model, self.heldout, self.eval_count)
