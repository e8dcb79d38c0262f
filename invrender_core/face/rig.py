"""`FaceRig`: what a fitted face video becomes, the hand-over between `face.video` and Blender's rig builder.

One identity for the whole video (baked into `neutral`), per-frame expression weights and head pose, an
albedo texture in the model's UV space and the source video's timing. Saved as the `--export-npz` file
(`save_npz` / `load_npz`, no pickled objects).

Frames: the head pose maps model coordinates to the camera frame of DESIGN.md (x right, y up, z towards the
viewer), so a vertex x of the posed mesh is ``rotation @ x + translation`` (model units, millimetres for
the Surrey model) and projects with the pinhole camera (focal in pixels, principal point at the image
centre).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NPZ_FORMAT_VERSION = 1


@dataclass
class FaceRig:
    """A fitted, animated face.

    Attributes:
        name: label (the video's file name).
        neutral: (V, 3) float32 vertices of the fitted identity with a neutral expression (model units).
        triangles: (T, 3) int32 0-based, counter-clockwise seen from outside.
        uvs: (V, 2) float32 texture coordinates in [0, 1] (v up), or None when the model has none.
        expression_basis: (V, 3, E) float32 offsets per unit expression weight.
        expression_names: (E,) str.
        expression_sigma: (E,) float32 standard deviation of each expression weight (slider range ±3σ).
        identity: (K,) float32 identity coefficients in standard deviations.
        expression: (F, E) float32 per-frame expression weights.
        rotation: (F, 3, 3) float32 model -> camera rotation per frame.
        translation: (F, 3) float32 model -> camera translation per frame (model units).
        focal: (F,) float32 focal length in pixels per frame.
        frames: (F,) int64 source frame indices.
        sh: (F, 9, 3) float32 per-frame SH lighting in the camera frame (Ramamoorthi-Hanrahan).
        albedo: (S, S, 3) float32 linear albedo texture in UV space (row 0 = v = 1), or None.
        image_size: (width, height) of the source frames in pixels.
        fps: frames per second of the source (0 when unknown, e.g. a folder of images).
        source: path of the source video / image / folder ("" when unknown).
        tracks: (F,) int64 the face tracker's stretch per frame (`video.FaceBox.track`): a new id where it
            switched to another face, at a cut; None on construction: one stretch (zeros).
        warnings: what the fit could not settle, for the user (not saved in the npz).
    """

    name: str
    neutral: np.ndarray
    triangles: np.ndarray
    uvs: np.ndarray | None
    expression_basis: np.ndarray
    expression_names: np.ndarray
    expression_sigma: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    focal: np.ndarray
    frames: np.ndarray
    sh: np.ndarray
    albedo: np.ndarray | None
    image_size: tuple[int, int]
    fps: float
    source: str = ""
    tracks: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.tracks is None:
            self.tracks = np.zeros(len(self.frames), np.int64)

    @property
    def num_frames(self) -> int:
        return int(self.expression.shape[0])

    def vertices(self, frame: int | None = None) -> np.ndarray:
        """Vertices in model units: (V, 3) for one frame index into the arrays (posed in the camera frame),
        or (F, V, 3) for all frames when `frame` is None."""
        if frame is not None:
            local = self.neutral + self.expression_basis @ self.expression[frame]  # (V, 3)
            return (local @ self.rotation[frame].T + self.translation[frame]).astype(np.float32)
        local = self.neutral[None] + np.einsum("vce,fe->fvc", self.expression_basis, self.expression)  # (F, V, 3)
        return (np.einsum("fvc,fdc->fvd", local, self.rotation) + self.translation[:, None]).astype(np.float32)

    def validate(self) -> FaceRig:
        """Check every shape against V, E, F; raise a ValueError naming the array."""
        v, e, f = self.neutral.shape[0], self.expression_basis.shape[-1], self.expression.shape[0]
        expected = {
            "neutral": (self.neutral, (v, 3)),
            "expression_basis": (self.expression_basis, (v, 3, e)),
            "expression_names": (self.expression_names, (e,)),
            "expression_sigma": (self.expression_sigma, (e,)),
            "expression": (self.expression, (f, e)),
            "rotation": (self.rotation, (f, 3, 3)),
            "translation": (self.translation, (f, 3)),
            "focal": (self.focal, (f,)),
            "frames": (self.frames, (f,)),
            "tracks": (self.tracks, (f,)),
            "sh": (self.sh, (f, 9, 3)),
        }
        if self.uvs is not None:
            expected["uvs"] = (self.uvs, (v, 2))
        for name, (arr, shape) in expected.items():
            if np.shape(arr) != shape:
                raise ValueError(f"FaceRig.{name} must have shape {shape}, got {np.shape(arr)}")
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3:
            raise ValueError(f"FaceRig.triangles must have shape (T, 3), got {self.triangles.shape}")
        if self.albedo is not None and (self.albedo.ndim != 3 or self.albedo.shape[2] != 3):
            raise ValueError(f"FaceRig.albedo must have shape (S, S, 3), got {self.albedo.shape}")
        if f == 0:
            raise ValueError("FaceRig has no frames")
        return self


def save_npz(rig: FaceRig, path) -> None:
    """Write the rig as .npz (the `invrender face --export-npz` file).

    Arrays: identity (K), expression (F, E), rotation (F, 3, 3), translation (F, 3), focal (F),
    vertices (F, V, 3) posed in the camera frame (model units), frames (F), tracks (F), sh (F, 9, 3), plus what
    rebuilds the rig: neutral, triangles, uvs, expression_basis, expression_names, expression_sigma,
    albedo, image_size, fps, name, source, format_version.
    """
    rig.validate()
    arrays = dict(
        format_version=np.array(NPZ_FORMAT_VERSION, dtype=np.int64),
        identity=rig.identity.astype(np.float32),
        expression=rig.expression.astype(np.float32),
        rotation=rig.rotation.astype(np.float32),
        translation=rig.translation.astype(np.float32),
        focal=rig.focal.astype(np.float32),
        vertices=rig.vertices(),
        frames=rig.frames.astype(np.int64),
        tracks=rig.tracks.astype(np.int64),
        sh=rig.sh.astype(np.float32),
        neutral=rig.neutral.astype(np.float32),
        triangles=rig.triangles.astype(np.int32),
        expression_basis=rig.expression_basis.astype(np.float32),
        expression_names=np.asarray(rig.expression_names, dtype=str).reshape(-1),
        expression_sigma=rig.expression_sigma.astype(np.float32),
        image_size=np.array(rig.image_size, dtype=np.int64),
        fps=np.array(rig.fps, dtype=np.float64),
        name=np.array(rig.name, dtype=str),
        source=np.array(rig.source, dtype=str),
    )
    if rig.uvs is not None:
        arrays["uvs"] = rig.uvs.astype(np.float32)
    if rig.albedo is not None:
        arrays["albedo"] = rig.albedo.astype(np.float32)
    with open(path, "wb") as f:  # a file object keeps np.savez from appending ".npz"
        np.savez(f, **arrays)


def load_npz(path) -> FaceRig:
    """Read a rig written by `save_npz` (no pickled objects); ValueError with the path when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        hint = "write one with `invrender face ... --export-npz`"
        raise ValueError(f"{path}: not a face-rig .npz ({e}); {hint}") from None
    if "format_version" not in a or int(a["format_version"]) != NPZ_FORMAT_VERSION or "neutral" not in a:
        raise ValueError(f"{path}: not a face-rig .npz written by `invrender face --export-npz`")
    rig = FaceRig(
        name=str(a["name"]),
        neutral=a["neutral"],
        triangles=a["triangles"],
        uvs=a.get("uvs"),
        expression_basis=a["expression_basis"],
        expression_names=a["expression_names"].astype(str),
        expression_sigma=a["expression_sigma"],
        identity=a["identity"],
        expression=a["expression"],
        rotation=a["rotation"],
        translation=a["translation"],
        focal=a["focal"],
        frames=a["frames"],
        tracks=a.get("tracks"),  # absent from files written before it was added: one stretch
        sh=a["sh"],
        albedo=a.get("albedo"),
        image_size=(int(a["image_size"][0]), int(a["image_size"][1])),
        fps=float(a["fps"]),
        source=str(a["source"]),
    )
    return rig.validate()
