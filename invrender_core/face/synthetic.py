"""Synthetic faces rendered from the user's morphable model: training data for the correspondence network and
videos with known parameters for evaluating the fitting.

A sample is a face crop like the detector gives (the head about 55-80 % of the crop's width) of a random
identity (N(0, 1) per component), expression (each blendshape on with probability 0.4, weight U(0, 1)), head
pose (yaw ±70°, pitch ±35°, roll ±25°), focal length (crop field of view 8-50°), skin tone and facial-feature
colours (brows, eyes, lips, nostrils from the landmark map when the model has one), SH lighting (an ambient
term plus a coloured directional light from the front hemisphere), a procedural background with a neck and
head-coloured blob, hair over the forehead, random occluders, sensor noise and exposure. The targets are the
mean-shape ("template") coordinates of the surface each pixel sees and the mask of visible face pixels.
Everything is deterministic in (seed, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .. import sh
from ..camera import Camera
from ..io.colour import linear_to_srgb, srgb_to_linear
from .morphable_model import MorphableModel
from .render import TemplateFrame, rasterize, vertex_normals

# Skin tones from light to dark (sRGB 0-255), interpolated.
_SKIN_SRGB = np.array([[241, 204, 182], [224, 172, 140], [198, 134, 103], [161, 102, 74], [112, 70, 48], [74, 46, 33]])
_LIP_TINT = np.array([1.0, 0.55, 0.6])
# ibug-68 ids of the features that get their own colour.
_BROWS = [[str(i) for i in range(18, 23)], [str(i) for i in range(23, 28)]]  # polylines
_EYES = {"right": [str(i) for i in range(37, 43)], "left": [str(i) for i in range(43, 49)]}
_LIPS = [[str(i) for i in (*range(49, 61), 49)]]  # the outer lip contour, closed
_NOSTRILS = [["32"], ["36"]]


@dataclass
class FaceParams:
    """Parameters of one rendered face: identity (K,) std units, expression (E,), rotation (3, 3) and
    translation (3,) model -> camera (model units), camera (pixels), sh (9, 3) camera frame."""

    identity: np.ndarray
    expression: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    camera: Camera
    sh: np.ndarray


def rotation_from_euler(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Head rotation (3, 3): yaw about y (turning left/right), pitch about x (nodding), roll about z."""
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """(size, size, channels) smooth random field in [0, 1] (bicubic upsampled noise)."""
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(field.reshape(size, size, channels), 0.0, 1.0)


def _feature_weight(model: MorphableModel, polylines: list[list[str]], radius: float) -> np.ndarray:
    """(V,) in [0, 1]: closeness of each mean-shape vertex to polylines through landmark vertices (ibug ids;
    a single id is a point), fading out at 1.5 `radius` (model units)."""
    d = np.full(model.num_vertices, np.inf)
    for ids in polylines:
        points = model.mean[[model.landmarks[i] for i in ids if i in model.landmarks]].astype(np.float64)
        ends = points[1:] if len(points) > 1 else points  # a single point: a zero-length segment
        for a, b in zip(points[: len(ends)], ends, strict=True):
            ab = b - a
            t = np.clip((model.mean - a) @ ab / max(ab @ ab, 1e-12), 0.0, 1.0)  # (V,) closest point on a-b
            d = np.minimum(d, np.linalg.norm(model.mean - (a + t[:, None] * ab), axis=1))
    return np.clip(1.5 - d / radius, 0.0, 1.0)


class FaceAlbedo:
    """Per-vertex linear albedo of a random face: skin tone, smooth variation and coloured features."""

    def __init__(self, model: MorphableModel):
        frame = TemplateFrame.of(model.mean)
        scale = frame.scale  # about 100 mm for a human face model
        self.template = frame.normalise(model.mean)  # (V, 3)
        self.brows = _feature_weight(model, _BROWS, 0.04 * scale)
        self.lips = _feature_weight(model, _LIPS, 0.03 * scale)
        self.nostrils = _feature_weight(model, _NOSTRILS, 0.03 * scale)
        eye_sets = [[model.landmarks[i] for i in ids if i in model.landmarks] for ids in _EYES.values()]
        self.eye_white, self.iris = np.zeros(model.num_vertices), np.zeros(model.num_vertices)
        for verts in eye_sets:
            if len(verts) < 3:
                continue
            centre = model.mean[verts].mean(axis=0)
            d = np.linalg.norm(model.mean - centre, axis=1)
            radius = np.linalg.norm(model.mean[verts] - centre, axis=1).mean()
            self.eye_white = np.maximum(self.eye_white, np.clip(1.5 - d / (0.6 * radius), 0, 1))
            self.iris = np.maximum(self.iris, np.clip(1.5 - d / (0.4 * radius), 0, 1))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """(V, 3) linear albedo in [0, 1]."""
        t = rng.uniform(0, len(_SKIN_SRGB) - 1)
        lo = int(t)
        skin_srgb = (_SKIN_SRGB[lo] * (1 - (t - lo)) + _SKIN_SRGB[min(lo + 1, len(_SKIN_SRGB) - 1)] * (t - lo)) / 255
        skin = srgb_to_linear(np.clip(skin_srgb * rng.uniform(0.9, 1.1, 3), 0, 1))
        # Smooth blotchiness: a few random sinusoids of the template coordinates.
        waves = rng.normal(0, 4.0, (3, 3))
        phase = rng.uniform(0, 2 * np.pi, 3)
        variation = 1 + 0.08 * np.sin(self.template @ waves + phase).sum(axis=1, keepdims=True) / 3
        albedo = skin * variation  # (V, 3)
        hair = srgb_to_linear(rng.uniform(0.05, 0.45) * np.array([1.0, 0.8, 0.6]) * rng.uniform(0.6, 1.0, 3))
        albedo = _mix(albedo, hair, self.brows * rng.uniform(0.5, 1.0))
        albedo = _mix(albedo, skin * _LIP_TINT * rng.uniform(0.6, 1.0), self.lips * rng.uniform(0.4, 1.0))
        albedo = _mix(albedo, skin * 0.2, self.nostrils)
        albedo = _mix(albedo, np.array([0.45, 0.42, 0.4]), self.eye_white * 0.7)
        iris = srgb_to_linear(rng.uniform(0.05, 0.5) * rng.uniform(0.5, 1.0, 3))
        albedo = _mix(albedo, iris, self.iris)
        return np.clip(albedo, 0.0, 1.0)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.asarray(t)[:, None] if np.ndim(t) == 1 else t
    return a * (1 - t) + b * t


def random_lighting(rng: np.random.Generator) -> np.ndarray:
    """SH (9, 3), camera frame: an ambient term plus a coloured light from the camera-facing hemisphere."""
    d = rng.normal(size=3)
    d[2] = abs(d[2]) + 0.3  # towards the viewer's side
    colour = rng.uniform(0.8, 1.2, 3)
    L = sh.directional(d / np.linalg.norm(d), rng.uniform(0.5, 1.6) * colour)
    ambient = rng.uniform(0.15, 0.6) * rng.uniform(0.85, 1.15, 3)  # irradiance, the same from every side
    L[0] += ambient / sh.basis(np.array([0.0, 0.0, 1.0]))[0]  # E(n) = basis(n)[0] * L00 for L00 alone
    return L


def random_params(model: MorphableModel, rng: np.random.Generator, size: int, frame: TemplateFrame,
                  max_yaw: float = 70.0) -> FaceParams:
    """Random identity, expression, pose, camera and lighting for a `size`² crop."""
    identity = rng.normal(0, 1, model.num_identity)
    expression = np.where(rng.random(model.num_expressions) < 0.4, rng.random(model.num_expressions), 0.0)
    rotation = rotation_from_euler(rng.uniform(-max_yaw, max_yaw), rng.uniform(-35, 35), rng.uniform(-25, 25))
    fov = rng.uniform(8.0, 50.0)
    camera = Camera.from_fov(size, size, fov)
    # Distance so the model's width (2 * frame.scale) spans 55-80 % of the crop; centre jittered by ±8 %.
    width_px = rng.uniform(0.55, 0.8) * size
    distance = camera.fx * 2 * frame.scale / width_px
    offset = rng.uniform(-0.08, 0.08, 2) * size * distance / camera.fx
    translation = np.array([offset[0], offset[1], -distance]) - rotation @ frame.centre
    return FaceParams(identity, expression, rotation, translation, camera, random_lighting(rng))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) linear background: smooth colour field plus a few flat shapes."""
    image = srgb_to_linear(_smooth_field(rng, size, int(rng.integers(2, 6)), 3) * rng.uniform(0.3, 1.0))
    for _ in range(int(rng.integers(0, 5))):
        colour = tuple(float(c) for c in srgb_to_linear(rng.random(3)))
        centre = tuple(int(c) for c in rng.integers(0, size, 2))
        axes = tuple(int(a) for a in rng.integers(size // 16, size // 3, 2))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return image


def render_face(model: MorphableModel, params: FaceParams, albedo: np.ndarray, frame: TemplateFrame,
                background: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Render one face. Returns linear `image` (H, W, 3), `template` (H, W, 3) template coordinates of the
    visible surface (0 outside), `mask` (H, W) bool and the `raster`'s triangle (H, W) / barycentric (H, W, 3)."""
    cam = params.camera
    local = model.vertices(params.identity, params.expression).astype(np.float64)  # (V, 3)
    posed = local @ params.rotation.T + params.translation  # (V, 3) camera frame
    raster = rasterize(posed, model.triangles, cam)
    normals = raster.interpolate(vertex_normals(posed, model.triangles), model.triangles)  # (H, W, 3)
    normals /= np.maximum(np.linalg.norm(normals, axis=2, keepdims=True), 1e-12)
    shading = np.maximum(sh.shading(normals, params.sh), 0.0)  # (H, W, 3)
    colour = raster.interpolate(albedo, model.triangles) * shading
    mask = raster.mask
    image = np.zeros((cam.height, cam.width, 3)) if background is None else background.astype(np.float64).copy()
    image[mask] = colour[mask]
    template = raster.interpolate(frame.normalise(model.mean), model.triangles)
    return dict(image=image, template=template * mask[..., None], mask=mask, triangle=raster.triangle,
                barycentric=raster.barycentric)


class SyntheticFaces:
    """Random face crops of `size`² pixels, deterministic in (seed, index): `sample(index)`."""

    def __init__(self, model: MorphableModel, size: int = 128, seed: int = 0, max_yaw: float = 70.0):
        self.model, self.size, self.seed, self.max_yaw = model, int(size), int(seed), float(max_yaw)
        self.frame = TemplateFrame.of(model.mean)
        self.albedo = FaceAlbedo(model)

    def sample(self, index: int) -> dict:
        """dict: image (S, S, 3) uint8 sRGB, template (S, S, 3) float32, mask (S, S) bool, params FaceParams."""
        rng = np.random.default_rng([self.seed, int(index)])
        s = self.size
        params = random_params(self.model, rng, s, self.frame, self.max_yaw)
        background = _background(rng, s)
        skin = self.albedo.sample(rng)
        # A neck and head-coloured blob behind the face, so that "skin" alone does not mean "face".
        uv, _ = params.camera.project(params.rotation @ self.frame.centre + params.translation)
        head = tuple(float(c) for c in skin.mean(axis=0) * rng.uniform(0.3, 0.9))
        cx, cy = int(uv[0]), int(uv[1])
        cv2.ellipse(background, (cx, cy + s // 3), (s // 5, s // 2), 0, 0, 360, head, -1)
        cv2.ellipse(background, (cx, cy), (int(s * 0.42), int(s * 0.48)), float(rng.uniform(-20, 20)), 0, 360,
                    head if rng.random() < 0.5 else tuple(float(c) for c in background[cy % s, cx % s]), -1)
        out = render_face(self.model, params, skin, self.frame, background)
        image, mask = out["image"], out["mask"].copy()
        occluders = np.zeros((s, s), np.uint8)
        if rng.random() < 0.6:  # hair over the forehead
            colour = tuple(float(c) for c in srgb_to_linear(rng.uniform(0.02, 0.5) * rng.uniform(0.6, 1.0, 3)))
            axes = (int(s * rng.uniform(0.3, 0.5)), int(s * rng.uniform(0.15, 0.3)))
            centre = (cx + int(rng.uniform(-0.1, 0.1) * s), cy - int(rng.uniform(0.3, 0.5) * s))
            cv2.ellipse(image, centre, axes, float(rng.uniform(-20, 20)), 0, 360, colour, -1)
            cv2.ellipse(occluders, centre, axes, 0, 0, 360, 1, -1)
        for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):  # hands, microphones, glasses
            colour = tuple(float(c) for c in srgb_to_linear(rng.random(3)))
            pts = (rng.random((4, 2)) * s).astype(np.int32)
            cv2.fillConvexPoly(image, pts, colour)
            cv2.fillConvexPoly(occluders, pts, 1)
        mask &= occluders == 0
        exposure = rng.uniform(0.6, 1.4) / max(np.percentile(image[mask], 95) if mask.any() else 1.0, 1e-3)
        image = image * exposure + rng.normal(0, rng.uniform(0.0, 0.02), image.shape)
        if rng.random() < 0.3:
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.2))
        srgb = np.round(linear_to_srgb(np.clip(image, 0, 1)) * 255).astype(np.uint8)
        template = (out["template"] * mask[..., None]).astype(np.float32)
        return dict(image=srgb, template=template, mask=mask, params=params)


@dataclass
class SyntheticVideo:
    """A rendered talking-head video with known parameters (evaluation of the fitting).

    frames (F, S, S, 3) uint8 sRGB; identity (K,); expression (F, E); rotation (F, 3, 3); translation (F, 3)
    (model -> camera, model units); camera (the same for all frames); sh (9, 3); albedo (V, 3) linear.
    """

    frames: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    camera: Camera
    sh: np.ndarray
    albedo: np.ndarray


def synthetic_video(model: MorphableModel, num_frames: int = 60, size: int = 256, seed: int = 0,
                    fov_deg: float = 30.0, max_angle_deg: float = 30.0) -> SyntheticVideo:
    """One random identity, skin and light; the head turns, nods and tilts smoothly (up to `max_angle_deg`),
    drifts a little, and the expression changes smoothly; the face spans about half the frame's width."""
    rng = np.random.default_rng([seed, 7])
    frame = TemplateFrame.of(model.mean)
    camera = Camera.from_fov(size, size, fov_deg)
    identity = rng.normal(0, 1, model.num_identity)
    albedo = FaceAlbedo(model).sample(rng)
    L = random_lighting(rng)
    L[1:4] *= 0.5  # softer directional light: the whole face stays visible
    background = _background(rng, size)
    distance = camera.fx * 2 * frame.scale / (0.5 * size)
    t = np.linspace(0, 1, num_frames)
    phases = rng.uniform(0, 2 * np.pi, 6)
    angles = max_angle_deg * np.stack([np.sin(2 * np.pi * (1.0 * t) + phases[0]),
                                       0.6 * np.sin(2 * np.pi * (0.7 * t) + phases[1]),
                                       0.4 * np.sin(2 * np.pi * (0.5 * t) + phases[2])], 1)  # (F, 3) yaw pitch roll
    drift = 0.04 * size * distance / camera.fx * np.stack([np.sin(2 * np.pi * t + phases[3]),
                                                           np.sin(2 * np.pi * 0.8 * t + phases[4])], 1)
    weights = np.clip(0.2 + 0.5 * np.sin(2 * np.pi * (t[:, None] * rng.uniform(0.5, 1.5, model.num_expressions))
                                         + rng.uniform(0, 2 * np.pi, model.num_expressions)), 0, 1)
    frames, rotations, translations = [], [], []
    for k in range(num_frames):
        R = rotation_from_euler(*angles[k])
        tr = np.array([drift[k, 0], drift[k, 1], -distance]) - R @ frame.centre
        params = FaceParams(identity, weights[k], R, tr, camera, L)
        image = render_face(model, params, albedo, frame, background)["image"]
        frames.append(np.round(linear_to_srgb(np.clip(image, 0, 1)) * 255).astype(np.uint8))
        rotations.append(R)
        translations.append(tr)
    return SyntheticVideo(np.stack(frames), identity, weights, np.stack(rotations), np.stack(translations),
                          camera, L, albedo)
