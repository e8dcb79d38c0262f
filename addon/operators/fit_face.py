"""Fit Face Rig: panel settings -> FaceRequest -> `pipeline.fit_face` (on a worker thread in the UI) -> rig builder."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import bpy

from .. import jobs
from .import_photo import (
    USER_ERRORS,
    JobModal,
    excluded_text,
    job_failure_message,
    report_warnings,
    run_with_progress,
)

if TYPE_CHECKING:  # the core is imported on use: it pulls in numpy, OpenCV and (on the worker) PyTorch
    from invrender_core.face.pipeline import FaceSettings


@dataclass(frozen=True)
class FaceRequest:
    """What Fit Face Rig fits: the files, the source camera's field of view and the core's settings.

    input_path: video, image or folder of frames; model_path, expressions_path: the morphable model (and the
    Surrey expression blendshapes, None: beside the model). fov_deg: horizontal field of view of the source
    camera in degrees, None: the fit estimates the focal. settings.device may be "auto" (resolved on the worker).
    """

    input_path: Path
    model_path: Path
    expressions_path: Path | None
    fov_deg: float | None
    settings: FaceSettings


def request_from_props(context) -> FaceRequest:
    """FaceRequest from the Face Rig panel's settings and the add-on preferences (device, weights folder)."""
    from invrender_core.face.pipeline import FaceSettings

    from ..prefs import get_preferences

    props, prefs = context.scene.invr, get_preferences(context)
    settings = FaceSettings(start=props.face_frame_start, end=props.face_frame_end or None,
                            step=props.face_frame_step, smoothing=props.face_smoothing,
                            weights_dir=prefs.weights_dir, device=prefs.device,
                            face_box=tuple(float(v) for v in props.face_box) if props.face_box[2] > 0 else None)
    return FaceRequest(
        input_path=Path(bpy.path.abspath(props.face_input_path)),
        model_path=Path(bpy.path.abspath(props.face_model_path)),
        expressions_path=Path(bpy.path.abspath(props.face_expressions_path)) if props.face_expressions_path else None,
        fov_deg=math.degrees(props.face_fov) if props.face_fov > 0 else None,
        settings=settings,
    )


def fit(request: FaceRequest, progress=None, cancel=None):
    """The bpy-free part (worker thread or main thread): `pipeline.fit_face_files`, as `invrender face` runs it.

    Raises ValueError/OSError for bad input (one line), `pipeline.Cancelled` when `cancel` is set.
    """
    from invrender_core.face import pipeline
    from invrender_core.scene import resolve_device

    settings = replace(request.settings, device=str(resolve_device(request.settings.device)))
    return pipeline.fit_face_files(request.input_path, request.model_path, settings, request.expressions_path,
                                   request.fov_deg, progress=progress, cancel=cancel)


def _build(operator, context, face_rig) -> set[str]:
    from ..build.rig import build_face_rig

    try:
        built = build_face_rig(face_rig, context)
    except USER_ERRORS as e:
        operator.report({"ERROR"}, str(e))
        return {"CANCELLED"}
    report_warnings(operator, face_rig.warnings + built.warnings)
    operator.report({"INFO"}, f"Fitted {face_rig.num_frames} frames: {built.collection.name}"
                    f"{excluded_text('rig', built.replaced)}")
    return {"FINISHED"}


def run_synchronously(operator, context, request: FaceRequest) -> set[str]:
    """Fit and build on the calling thread (background mode, scripts, tests) with the cursor progress."""
    face_rig = run_with_progress(operator, context, lambda progress: fit(request, progress=progress))
    return {"CANCELLED"} if face_rig is None else _build(operator, context, face_rig)


def start_fit(request: FaceRequest) -> jobs.Job:
    """Run the bpy-free fit of `request` on a worker thread (progress and cancel through the job)."""
    return jobs.start(lambda progress, cancel: fit(request, progress=progress, cancel=cancel),
                      f"Fitting {request.input_path.name}")


def finish_job(operator, context, job: jobs.Job) -> set[str]:
    """Main thread, after the worker ended: build the rig from its fit, or report why there is none."""
    jobs.release(job)
    if job.state == jobs.FINISHED:
        return _build(operator, context, job.result)
    operator.report({"ERROR"}, job_failure_message(job, "Face fit"))
    return {"CANCELLED"}


class INVR_OT_fit_face(JobModal, bpy.types.Operator):
    """Fit the morphable face model to the face in a video, an image or a folder of frames and build an animated,
    textured face rig (shape keys, head pose, source camera)"""

    bl_idname = "invr.fit_face"
    bl_label = "Fit Face Rig"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        props = context.scene.invr
        for label, path in (("video, image or folder", props.face_input_path), ("face model", props.face_model_path)):
            if not path:
                self.report({"ERROR"}, f"No {label} chosen: pick one in the Face Rig panel")
                return {"CANCELLED"}
        request = request_from_props(context)
        if bpy.app.background or context.window is None:
            return run_synchronously(self, context, request)
        return self.run_modal(context, start_fit(request))

    def finish(self, context):
        return finish_job(self, context, self._job)


classes = (INVR_OT_fit_face,)
