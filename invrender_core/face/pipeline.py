"""Face video -> `FaceRig`: the whole face tool, as the CLI (`invrender face`) and the add-on run it.

1. Frames (`video.open_source`) and one head box per frame (`video.track_faces`; when the detector finds no
   face anywhere the whole frame is tried: the face may fill it).
2. Each box is cropped at the correspondence network's size; the network gives per pixel a template
   coordinate, a face probability and a confidence (`nets.face_corr`). A crop whose face mask is framed unlike
   the network's training crops (a detector box around head and shoulders, or the whole frame) is cut again
   around the mask and predicted again (`box_from_mask`).
3. Confident face pixels become correspondences: template -> (triangle, barycentric) on the mean surface
   (`render.SurfaceLookup`), crop pixel -> frame pixel, the frame's linear colour there.
4. One identity for all frames, per-frame expression and head pose, one focal length: `fit.fit_frames`.
5. Temporal smoothing of expression, rotation and translation (`video.smooth_series` / `smooth_rotations`).
6. Inverse SH lighting: per-vertex albedo shared by all frames (`fit.inverse_sh_frames` on frames spread
   through the video, with the model's left-right symmetry as a prior), every frame's SH lighting given that
   albedo (`fit.frame_lighting`), then an albedo texture aggregated over frames (`texture.aggregate_albedo`).

Frames are read twice (tracking, then correspondences) rather than kept, so long videos fit in memory; only
the few frames the texture uses are kept.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..camera import Camera
from . import fit, video
from .morphable_model import MorphableModel
from .render import SurfaceLookup
from .rig import FaceRig
from .texture import aggregate_albedo, sample_bilinear

DEFAULT_FACE_WEIGHTS = "face-corr-small"
FOV_RANGE_DEG = (1.0, 170.0)  # a field of view given by the user
ALBEDO_FRAMES = 8  # frames (spread through the video) the shared per-vertex albedo is solved on
# Ridge prior on the SH lighting (per coefficient, against the per-frame data term whose weights sum to 1): the
# face's normals leave the lighting from behind the head undetermined; this keeps it near zero there.
LIGHT_PRIOR_PRECISION = 1e-3
MIN_POINTS = 50  # correspondences a frame needs to be fitted; fewer: no face there
MAX_LOOKUP_DISTANCE = 0.05  # template units (~5 mm): predictions further off the mean surface are dropped
# Framing of the network's training crops (synthetic.py: the model spans 55-80 % of the side, centre jittered
# by 8 %), measured on its visible-face masks (held-out seed 1000003, 200 crops): the mask's larger side spans
# 47-80 % of the crop (5th-95th percentile, median 61 %) and its centre lies within 13 % of the crop's. A crop
# whose predicted mask is framed outside these ranges is cut again around the mask, at the median fill.
FACE_FILL = 0.61
FACE_FILL_RANGE = (0.47, 0.80)
MAX_CENTRE_OFFSET = 0.13
MIN_MASK_FRACTION = 0.01  # a mask smaller than this part of the crop is not a face
# When the detector found no face anywhere (the whole frame is tried), the network's own evidence must show one:
# the mean confidence over its face mask. Measured with face-corr-small (mean over frames): photos without a face
# (the sample street, MegaDepth and OpenSfM photos) 0.17-0.23; faces 0.35-0.59 (the small stage faces lowest).
MIN_UNDETECTED_CONFIDENCE = 0.3


class Cancelled(RuntimeError):
    """The user cancelled the fit."""


@dataclass
class FaceSettings:
    """Options of the face tool.

    start, end, step: the frames used (source indices, end exclusive; None: to the last frame).
    smoothing: Gaussian sigma in frames for the per-frame parameters (0: none).
    focal: focal length in pixels of the source frames; None estimates it.
    max_points: correspondences per frame (a random subset of the confident face pixels).
    min_confidence: network confidence below which a pixel is not used.
    texture_size: side of the albedo texture; texture_frames: frames aggregated into it.
    detect_every: run the face detector every n-th frame (the tracker interpolates between).
    identity_weight, expression_weight: prior weights of the least-squares fit (`fit.fit_frames`): the network's
        correspondence errors are correlated between neighbouring pixels and biased (towards the frontal view),
        so the identity prior is 300 times firmer than for independent 1-pixel errors. Chosen on five validation
        clips (`evaluate_face --synthetic-seeds 100 101 102 103 104`) with face-corr-small: mean identity error
        4.01 / 3.48 / 3.38 / 3.59 mm at weights 30 / 300 / 1000 / 3000 (mean shape 5.19), rotation 5.5 to 5.8
        degrees at all four; checked again once misframed crops were cut again: 3.32 / 3.17 / 3.18 mm at
        100 / 300 / 1000, rotation 4.8 to 5.1 degrees; and with the weights of the card's steps 8 and 10, where
        100 did better on the validation clips but worse on real faces (more video jitter; with step 10 also
        a higher landmark error; the card has the numbers).
    weights: correspondence network (registered name or .safetensors path); weights_dir: the user's folder.
    device: torch device for the network ("cpu", "cuda", ...); batch_size: crops per network call.
    seed: seeds the choice of correspondences.
    mirror_average: also run the network on each crop's mirror image and average the two predictions
        (`predict_mirror_averaged`; for models symmetric about x = 0), at twice the network's time. The network
        is not exactly mirror-symmetric, and averaging cancels the part of its errors that a mirror image turns
        around. Validation clips (seeds 100-104), rotation error / frames within 3 degrees / identity error:
        with the weights of the model card's step 6, 4.9 -> 4.1 degrees / 16 -> 36 % / 3.17 -> 3.05 mm; with
        the shipped step 8 (adapted on mirror-averaged fits), 3.07 -> 3.01 degrees / 52 -> 59 % / 2.50 -> 2.55 mm.
    face_box: (x, y, width, height) in pixels of a rectangle around the face to fit, in the first used frame
        (brows to chin, ear to ear; `video.head_box_from_rect`): for frames with several faces, or a face the
        detector misses; the tracker follows it from there. None: the detector picks the largest face.
    """

    start: int = 0
    end: int | None = None
    step: int = 1
    smoothing: float = 1.5
    focal: float | None = None
    max_points: int = 1500
    min_confidence: float = 0.2
    texture_size: int = 512
    texture_frames: int = 12
    detect_every: int = 1
    identity_weight: float = 300.0
    expression_weight: float = 1.0
    weights: str = DEFAULT_FACE_WEIGHTS
    weights_dir: Path | None = None
    device: str = "cpu"
    batch_size: int = 16
    seed: int = 0
    face_box: tuple[float, float, float, float] | None = None
    mirror_average: bool = True


Progress = Callable[[str, float], None]


def predict_mirror_averaged(net, crops: np.ndarray, mirror_x: float) -> dict[str, np.ndarray]:
    """net.predict on crops (N, S, S, 3) and on their mirror images, averaged (`mirror_average`)."""
    return mirror_average(net.predict(crops), net.predict(np.ascontiguousarray(crops[:, :, ::-1])), mirror_x)


def mirror_average(pred: dict[str, np.ndarray], mirrored: dict[str, np.ndarray],
                   mirror_x: float) -> dict[str, np.ndarray]:
    """The average of a prediction on crops and one on their mirror images (template (N, S, S, 3), mask and
    confidence (N, S, S) each).

    mirror_x: the model's plane of symmetry x = mirror_x in template coordinates. A pixel of the mirror image
    that sees template point (x, y, z) sees (2 mirror_x - x, y, z) in the crop itself. Where both predictions
    see the face the templates and confidences are averaged, elsewhere the crop's own are kept; the masks are
    averaged everywhere."""
    template = mirrored["template"][:, :, ::-1].copy()
    template[..., 0] = 2.0 * mirror_x - template[..., 0]
    mask, confidence = mirrored["mask"][:, :, ::-1], mirrored["confidence"][:, :, ::-1]
    both = (pred["mask"] > 0.5) & (mask > 0.5)
    return dict(template=np.where(both[..., None], 0.5 * (pred["template"] + template), pred["template"]),
                mask=0.5 * (pred["mask"] + mask),
                confidence=np.where(both, 0.5 * (pred["confidence"] + confidence), pred["confidence"]))


def mirror_plane(frame, symmetry: np.ndarray | None) -> float | None:
    """x of the model's plane of symmetry in template coordinates (`TemplateFrame` frame): the model's x = 0
    when its mean shape is symmetric about it (`symmetry`, from `fit.mirror_vertices`, is not None), else None."""
    return None if symmetry is None else float(frame.normalise([0.0, 0.0, 0.0])[0])


def correspondences_from_prediction(template: np.ndarray, mask: np.ndarray, confidence: np.ndarray,
                                    box: video.FaceBox, frame_linear: np.ndarray | None, lookup: SurfaceLookup,
                                    settings: FaceSettings, rng: np.random.Generator) -> fit.Correspondences:
    """One crop's network output -> correspondences in the full frame.

    template (S, S, 3), mask (S, S) face probability, confidence (S, S); box: the crop's head box;
    frame_linear (H, W, 3) the frame's linear colours, sampled as the correspondences' colors (None: no colors)."""
    size = template.shape[0]
    if template.shape != (size, size, 3) or mask.shape != (size, size) or confidence.shape != (size, size):
        raise ValueError(f"template (S, S, 3), mask and confidence (S, S) expected, got {template.shape}, "
                         f"{mask.shape}, {confidence.shape}")
    rows, cols = np.nonzero((mask > 0.5) & (confidence >= settings.min_confidence))
    if rows.size > settings.max_points:
        keep = rng.choice(rows.size, settings.max_points, replace=False)
        rows, cols = rows[keep], cols[keep]
    triangles, barycentric, distance = lookup.query(template[rows, cols])
    near = distance <= MAX_LOOKUP_DISTANCE
    rows, cols = rows[near], cols[near]
    crop_uv = np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64)  # pixel centres
    pixels = video.crop_to_frame(crop_uv, box, size)
    colors = None if frame_linear is None else sample_bilinear(frame_linear, pixels)
    return fit.Correspondences(pixels=pixels, triangles=triangles[near], barycentric=barycentric[near],
                               weights=np.clip(confidence[rows, cols], 0.0, 1.0).astype(np.float64),
                               colors=colors)


def mask_confidence(mask: np.ndarray, confidence: np.ndarray) -> float:
    """Mean network confidence (S, S) over the face mask (S, S) face probability > 0.5; 0 for an empty mask."""
    face = mask > 0.5
    return float(confidence[face].mean()) if face.any() else 0.0


def box_from_mask(mask: np.ndarray, box: video.FaceBox, only_if_misframed: bool = False) -> video.FaceBox | None:
    """The head box framing the face the network found in a crop of `box` as in its training crops (the mask's
    larger side FACE_FILL of the box; in box's track): mask (S, S) face probability. None when the mask holds no
    face, or, with `only_if_misframed`, when the crop is framed like a training crop already (FACE_FILL_RANGE,
    MAX_CENTRE_OFFSET)."""
    size = mask.shape[0]
    rows, cols = np.nonzero(mask > 0.5)
    if rows.size < MIN_MASK_FRACTION * mask.size:
        return None
    centre_crop = np.array([(cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2])
    extent = max(np.ptp(cols), np.ptp(rows)) + 1.0  # crop pixels
    offset = np.abs(centre_crop / size - 0.5).max()
    if only_if_misframed and FACE_FILL_RANGE[0] <= extent / size <= FACE_FILL_RANGE[1] \
            and offset <= MAX_CENTRE_OFFSET:
        return None
    centre = video.crop_to_frame(centre_crop[None], box, size)[0]
    side = extent * box.size / size / FACE_FILL
    return video.FaceBox(centre[0] - side / 2, centre[1] - side / 2, side, 0.0, False, box.track)


def smooth_per_track(expression: np.ndarray, rotation: np.ndarray, translation: np.ndarray, times: np.ndarray,
                     tracks: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expression (F, E), rotation (F, 3, 3) and translation (F, 3) seen at `times` (F,) smoothed over time
    (Gaussian sigma in frames), each of the tracker's stretches (`tracks` (F,), `video.FaceBox.track`) on its
    own: across a cut the pose jumps, and must not be blended."""
    expression, rotation, translation = (np.array(a, np.float64) for a in (expression, rotation, translation))
    for track in np.unique(tracks):
        part = np.flatnonzero(tracks == track)
        expression[part] = video.smooth_series(expression[part], sigma, times[part])
        rotation[part] = video.smooth_rotations(rotation[part], sigma, times[part])
        translation[part] = video.smooth_series(translation[part], sigma, times[part])
    return expression, rotation, translation


def smooth_motion(expression: np.ndarray, rotation: np.ndarray, translation: np.ndarray, frames, tracks,
                  settings: FaceSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-frame motion of a fit smoothed as `fit_face` smooths it (`smooth_per_track` with
    settings.smoothing; unchanged when that is 0 or there is one frame). frames (F,) source indices, tracks (F,)."""
    if settings.smoothing <= 0 or len(frames) < 2:
        return expression, rotation, translation
    # Time in used frames (source index / step): frames where no face was found leave a gap in it.
    times = np.asarray(frames, np.float64) / settings.step
    return smooth_per_track(expression, rotation, translation, times, np.asarray(tracks), settings.smoothing)


def _inside(box: video.FaceBox, frame_shape: tuple) -> bool:
    """Whether the box lies within a frame of shape (H, W, ...)."""
    height, width = frame_shape[:2]
    return box.x >= 0 and box.y >= 0 and box.x + box.size <= width and box.y + box.size <= height


def _first_box(face_box, source: video.FrameSource) -> video.FaceBox:
    """settings.face_box -> the head box of the first frame; ValueError unless it lies in the frame."""
    x, y, width, height = (float(v) for v in face_box)
    box = video.head_box_from_rect(x, y, width, height)
    if not (x >= 0 and y >= 0 and x + width <= source.width and y + height <= source.height):
        raise ValueError(f"the face box x={x:g}, y={y:g}, width={width:g}, height={height:g} reaches outside the "
                         f"{source.width} x {source.height} frame: give a rectangle around the face inside it "
                         "(pixels from the top-left corner)")
    return box


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("face fit cancelled")


def fit_face(input_path, model: MorphableModel, settings: FaceSettings | None = None,
             progress: Progress | None = None, cancel: threading.Event | None = None, net=None) -> FaceRig:
    """Fit `model` to the face in a video, an image or a folder of frames and return the animated rig.

    progress(stage, fraction) is called along the way; setting `cancel` stops at the next frame with
    `Cancelled`. `net` overrides the network named by settings.weights. Raises ValueError (one line, says
    what to do) for unreadable input, missing weights, or no face in the frames.
    """
    settings = settings or FaceSettings()
    report = progress or (lambda stage, fraction: None)
    if model.uvs is None:
        raise ValueError(f"{model.name or 'the morphable model'} has no texture coordinates (UVs): the rig's albedo "
                         "texture needs them; give a model with UVs (the Surrey .bin has them)")
    source = video.open_source(input_path, settings.start, settings.end, settings.step)
    name = Path(input_path).stem if source.kind != "folder" else Path(input_path).name
    if net is None:
        from ..nets import face_corr

        net = face_corr.load(settings.weights, settings.weights_dir, settings.device)
    total = len(source.frames)

    def frames_with_progress(stage: str, lo: float, hi: float):
        with video.iter_frames(source) as reader:
            for k, (index, rgb) in enumerate(reader):
                _check_cancel(cancel)
                report(stage, lo + (hi - lo) * k / total)
                yield index, rgb

    first_box = None if settings.face_box is None else _first_box(settings.face_box, source)
    report("tracking the face", 0.0)
    boxes = video.track_faces((rgb for _, rgb in frames_with_progress("tracking the face", 0.0, 0.15)),
                              detect_every=settings.detect_every, source_name=str(input_path), first_box=first_box)

    # No detection anywhere and no box given: the boxes are the whole frame, which may hold no face at all.
    undetected = settings.face_box is None and not any(b.detected for b in boxes)
    lookup = SurfaceLookup(model.mean, model.triangles)
    symmetry = fit.mirror_vertices(model.mean)  # also the albedo's symmetry prior
    mirror_x = mirror_plane(lookup.frame, symmetry) if settings.mirror_average else None
    rng = np.random.default_rng(settings.seed)
    texture_picks = set(np.linspace(0, total - 1, min(settings.texture_frames, total)).round().astype(int).tolist())
    corrs, indices, fitted_tracks, kept_frames = [], [], [], {}
    batch: list[tuple[int, int, np.ndarray]] = []  # (position, source index, frame)

    def predict(items):
        crops = np.stack([video.crop(rgb, boxes[position], net.size)[0] for position, _, rgb in items])
        return net.predict(crops) if mirror_x is None else predict_mirror_averaged(net, crops, mirror_x)

    def flush():
        pred = predict(batch)
        # The network sees the face framed unlike its training crops when the detector's box is off (it grows
        # around head and shoulders in turned views) or there is no box (no detection anywhere: the whole
        # frame): such frames are cut again around the face its mask shows, and predicted again. Not when that
        # would widen the crop past the frame's edges: it would show the network black borders it never saw in
        # training, in place of face pixels.
        again = []
        for j, (position, _, rgb) in enumerate(batch):
            box = box_from_mask(pred["mask"][j], boxes[position], only_if_misframed=True)
            if box is not None and (box.size <= boxes[position].size or _inside(box, rgb.shape)):
                boxes[position] = box
                again.append(j)
        if again:
            for key, value in predict([batch[j] for j in again]).items():
                pred[key][again] = value
        for j, (position, index, rgb) in enumerate(batch):
            if undetected and mask_confidence(pred["mask"][j], pred["confidence"][j]) < MIN_UNDETECTED_CONFIDENCE:
                continue
            linear = video.frame_to_linear(rgb)
            corr = correspondences_from_prediction(pred["template"][j], pred["mask"][j], pred["confidence"][j],
                                                   boxes[position], linear, lookup, settings, rng)
            if len(corr) >= MIN_POINTS:
                corrs.append(corr)
                indices.append(index)
                fitted_tracks.append(boxes[position].track)
                if position in texture_picks:
                    kept_frames[index] = (linear, pred["mask"][j], video.crop_affine(boxes[position], net.size))
        batch.clear()

    for position, (index, rgb) in enumerate(frames_with_progress("finding correspondences", 0.15, 0.7)):
        batch.append((position, index, rgb))
        if len(batch) == settings.batch_size:
            flush()
    if batch:
        flush()
    if not corrs:
        raise ValueError(f"no face found in {input_path}: neither the detector nor the correspondence network "
                         "saw a face; give frames where the face is visible and large enough (a tenth of the frame "
                         "or more)")

    _check_cancel(cancel)
    report("fitting shape and pose", 0.7)
    image_size = (source.width, source.height)
    identity, fits = fit.fit_frames(model, corrs, image_size, focal=settings.focal,
                                    identity_weight=settings.identity_weight,
                                    expression_weight=settings.expression_weight)
    expression = np.stack([f.expression for f in fits])  # (F, E)
    rotation = np.stack([f.rotation for f in fits])  # (F, 3, 3)
    translation = np.stack([f.translation for f in fits])  # (F, 3)
    expression, rotation, translation = smooth_motion(expression, rotation, translation, indices, fitted_tracks,
                                                      settings)
    focal = float(fits[0].focal)
    smoothed = [fit.FrameFit(identity, expression[k], rotation[k], translation[k], focal, fits[k].rms_px)
                for k in range(len(fits))]

    _check_cancel(cancel)
    report("estimating albedo and lighting", 0.85)
    light_prior = (np.zeros(27), LIGHT_PRIOR_PRECISION * np.eye(27))
    subset = np.unique(np.linspace(0, len(fits) - 1, min(ALBEDO_FRAMES, len(fits))).round().astype(int))
    albedo_vertices, _ = fit.inverse_sh_frames(model, [smoothed[k] for k in subset], [corrs[k] for k in subset],
                                               symmetry=symmetry, light_prior=light_prior,
                                               iterations=5)
    lighting = np.stack([fit.frame_lighting(model, f, c, albedo_vertices, light_prior)
                         for f, c in zip(smoothed, corrs, strict=True)])  # (F, 9, 3)
    camera = Camera(source.width, source.height, focal, focal, source.width / 2.0, source.height / 2.0)
    picked = [k for k, index in enumerate(indices) if index in kept_frames]
    report("aggregating the albedo texture", 0.92)
    texture = aggregate_albedo([kept_frames[indices[k]][0] for k in picked],
                               [smoothed[k].camera_vertices(model) for k in picked], [camera] * len(picked),
                               [lighting[k] for k in picked], model.triangles, model.uvs,
                               size=settings.texture_size, fallback=albedo_vertices,
                               face_masks=[kept_frames[indices[k]][1:] for k in picked])
    report("done", 1.0)
    focal_unsettled = None if settings.focal is not None else focal_warning(focal, source.width)
    return FaceRig(
        name=name, neutral=model.vertices(identity), triangles=model.triangles.astype(np.int32),
        uvs=model.uvs.astype(np.float32), expression_basis=model.expression_basis.astype(np.float32),
        expression_names=np.asarray(model.expression_names, dtype=str),
        expression_sigma=np.ones(model.num_expressions, np.float32), identity=identity.astype(np.float32),
        expression=expression.astype(np.float32), rotation=rotation.astype(np.float32),
        translation=translation.astype(np.float32), focal=np.full(len(fits), focal, np.float32),
        frames=np.asarray(indices, np.int64), sh=np.asarray(lighting, np.float32), albedo=texture,
        image_size=image_size, fps=float(source.fps), source=str(Path(input_path).resolve()),
        tracks=np.asarray(fitted_tracks, np.int64),
        warnings=[focal_unsettled] if focal_unsettled else [],
    ).validate()


def focal_warning(focal: float, width: int) -> str | None:
    """A warning when the fitted focal (pixels) is within 1 % of a limit of `fit.FOV_RANGE_DEG` for frames `width`
    wide: the fit could not determine it (a face far away or nearly still), so depth and perspective are guesses
    (a talking-head video fitted 2731 px against the 10 degree limit's 2743)."""
    low, high = fit.focal_bounds(width)
    for bound, fov in ((high, fit.FOV_RANGE_DEG[0]), (low, fit.FOV_RANGE_DEG[1])):
        if abs(focal / bound - 1.0) < 0.01:
            return (f"the fitted field of view sits at the fit's {fov:g} degree limit: the frames do not determine "
                    "the focal length (a far or nearly still face), so the head's distance and perspective are "
                    "guesses; give the camera's field of view (--fov) if known")
    return None


def fit_face_files(input_path, model_path, settings: FaceSettings | None = None, expressions_path=None,
                   fov_deg: float | None = None, progress: Progress | None = None,
                   cancel: threading.Event | None = None) -> FaceRig:
    """`fit_face` from files, as `invrender face` and the add-on's Fit Face Rig run it: load the morphable model
    (`load_model`; `expressions_path`: the Surrey blendshapes, None: beside the model) and turn a horizontal field
    of view of the source camera in degrees (None: the fit estimates the focal) into settings.focal."""
    from .morphable_model import load_model

    settings = replace(settings or FaceSettings())
    if fov_deg is not None:
        if not FOV_RANGE_DEG[0] <= fov_deg <= FOV_RANGE_DEG[1]:
            raise ValueError(f"the field of view must be between {FOV_RANGE_DEG[0]:g} and {FOV_RANGE_DEG[1]:g} "
                             f"degrees, got {fov_deg:g}")
        width = video.open_source(input_path, settings.start, settings.end, settings.step).width
        settings.focal = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    (progress or (lambda stage, fraction: None))("loading the face model", 0.0)
    model = load_model(model_path, expressions_path=expressions_path)
    _check_cancel(cancel)
    return fit_face(input_path, model, settings, progress=progress, cancel=cancel)
