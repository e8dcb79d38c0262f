"""Import Photo: panel settings -> ImportSettings -> `decompose` (on a worker thread in the UI) -> scene builder."""

from __future__ import annotations

from pathlib import Path

import bpy

from .. import jobs

OPTION_NAMES = ("fov_override", "max_side", "mesh_step", "discontinuity_threshold", "background_band",
                "sun_fraction", "match_photo")


def settings_from_props(context, photo: str, with_maps: bool):
    """ImportSettings from the panel's settings and the add-on preferences; with_maps: use the panel's depth and
    normal maps instead of the networks."""
    from ..build.import_photo import ImportSettings
    from ..prefs import get_preferences

    props, prefs = context.scene.invr, get_preferences(context)
    return ImportSettings(
        photo=Path(bpy.path.abspath(photo)),
        depth=Path(bpy.path.abspath(props.depth_path)) if with_maps else None,
        normals=Path(bpy.path.abspath(props.normal_path)) if with_maps else None,
        fov_deg=props.fov_override or None,
        max_side=props.max_side,
        mesh_step=props.mesh_step,
        discontinuity_threshold=props.discontinuity_threshold,
        sun_fraction=props.sun_fraction,
        background_band=props.background_band,
        match_photo=props.match_photo,
        device=prefs.device,
        weights_dir=prefs.weights_dir,
    )


# Errors the core raises for bad input, missing weights, memory: they become an ERROR report.
USER_ERRORS = (ValueError, OSError, MemoryError, RuntimeError)


def report_warnings(operator, warnings) -> None:
    """A WARNING report for each of `warnings` (what the artist should know: unreliable input, which import a tool
    used, objects in the way)."""
    for warning in warnings:
        operator.report({"WARNING"}, warning)


def excluded_text(kind: str, replaced) -> str:
    """The INFO report's tail naming a build's earlier builds of the same file (`replaced`), now excluded from the
    view layer; "" when there are none."""
    return f"; the earlier {kind} {', '.join(replaced)} is excluded from the view layer" if replaced else ""


def _build(operator, context, settings, estimate_result) -> set[str]:
    from ..build.import_photo import import_photo

    try:
        built = import_photo(settings, context.scene, estimate_result=estimate_result)
    except USER_ERRORS as e:
        operator.report({"ERROR"}, str(e))
        return {"CANCELLED"}
    context.scene.invr.photo_path = str(settings.photo)
    # Unreliable input, fusion (said, not only stored); the artist's objects in the import's way.
    report_warnings(operator, [*estimate_result.metadata.get("warnings", []), *built.warnings])
    gain = "" if built.photo_gain is None else ", albedo gain " + " ".join(f"{g:.2f}" for g in built.photo_gain)
    operator.report({"INFO"}, f"Built {built.collection.name}: {len(built.mesh.data.vertices)} vertices{gain}"
                    f"{excluded_text('import', built.replaced)}")
    return {"FINISHED"}


def run_with_progress(operator, context, work):
    """`work(progress)` on the calling thread with the cursor progress; its result, or None after an ERROR report
    when it raised one of USER_ERRORS (background mode, scripts, tests)."""
    wm = context.window_manager
    wm.progress_begin(0, 100)
    try:
        return work(lambda stage, fraction: wm.progress_update(int(100 * fraction)))
    except USER_ERRORS as e:
        operator.report({"ERROR"}, str(e))
        return None
    finally:
        wm.progress_end()


def run_synchronously(operator, context, settings) -> set[str]:
    """Estimate and build on the calling thread with the cursor progress."""
    from ..build.import_photo import estimate

    result = run_with_progress(operator, context, lambda progress: estimate(settings, progress=progress))
    return {"CANCELLED"} if result is None else _build(operator, context, settings, result)


def start_estimate(settings) -> jobs.Job:
    """Run the bpy-free estimate of `settings` on a worker thread (progress and cancel through the job)."""
    from ..build.import_photo import estimate

    return jobs.start(lambda progress, cancel: estimate(settings, progress=progress, cancel=cancel),
                      f"Importing {settings.photo.name}")


def finish_job(operator, context, job: jobs.Job, settings) -> set[str]:
    """Main thread, after the worker ended: build the scene from its estimate, or report why there is none."""
    jobs.release(job)
    if job.state == jobs.FINISHED:
        return _build(operator, context, settings, job.result)
    operator.report({"ERROR"}, job_failure_message(job, "Import"))
    return {"CANCELLED"}


def job_failure_message(job: jobs.Job, what: str) -> str:
    """The ERROR report for a job that ended without a result; `what` names the work ("Import")."""
    if job.state == jobs.CANCELLED:
        return f"{what} cancelled: the scene is unchanged"
    if isinstance(job.error, USER_ERRORS):
        return str(job.error)
    import traceback  # a bug, not bad input: keep the traceback in the console

    traceback.print_exception(job.error)
    return f"{what} failed ({type(job.error).__name__}: {job.error}); see the console"


def _redraw_sidebars(context) -> None:
    for area in context.screen.areas if context.screen else ():
        if area.type == "VIEW_3D":
            area.tag_redraw()


class JobModal:
    """The modal part of an operator whose work runs on a `jobs.Job`: `run_modal` starts polling it on a timer,
    with progress in the cursor, the status bar and the sidebar; Esc cancels it. The operator's `finish(context)`
    runs on the main thread once the worker ended and returns the operator's result."""

    @classmethod
    def poll(cls, context):
        job = jobs.active_job()
        if job is not None:
            cls.poll_message_set(f"{job.name} is running: wait for it or press Esc")
            return False
        return True

    def run_modal(self, context, job: jobs.Job) -> set[str]:
        self._job = job
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()  # the worker stops at its next stage boundary; keep polling until it has
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        state = self._job.poll()
        context.window_manager.progress_update(int(100 * self._job.fraction))
        if context.workspace is not None:
            context.workspace.status_text_set(self._job.status_text if state == jobs.RUNNING else None)
        _redraw_sidebars(context)
        if state == jobs.RUNNING:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        return self.finish(context)

    def cancel(self, context):
        """Blender ends the modal itself (a file is loaded, the window closes): stop the worker, build nothing,
        and free the job so that a later one can start."""
        self._job.cancel()
        self._job.wait(10)
        jobs.release(self._job)
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)


class INVR_OT_import_photo(JobModal, bpy.types.Operator):
    """Estimate albedo, normals, shadow, lighting and depth of a photo with the networks and build a
    camera-matched, relightable scene from them"""

    bl_idname = "invr.import_photo"
    bl_label = "Import Photo as Relightable Scene"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(
        name="Photo", description="Photo to import (PNG, JPEG, TIFF, WebP, EXR, HDR); empty: the panel's photo",
        subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        self.filepath = bpy.path.abspath(context.scene.invr.photo_path)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        for name in OPTION_NAMES:
            layout.prop(context.scene.invr, name)

    def execute(self, context):
        photo = self.filepath or context.scene.invr.photo_path
        if not photo:
            self.report({"ERROR"}, "No photo chosen: pick one in the file browser or the InvRender panel")
            return {"CANCELLED"}
        self._settings = settings_from_props(context, photo, with_maps=False)
        if bpy.app.background or context.window is None:
            return run_synchronously(self, context, self._settings)
        return self.run_modal(context, start_estimate(self._settings))

    def finish(self, context):
        return finish_job(self, context, self._job, self._settings)


class INVR_OT_import_rgbd(bpy.types.Operator):
    """Build a camera-matched, relightable scene from a photo with its depth and normal maps"""

    bl_idname = "invr.import_rgbd"
    bl_label = "Import Photo with Depth and Normals"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        props = context.scene.invr
        for label, path in (("photo", props.photo_path), ("depth map", props.depth_path),
                            ("normal map", props.normal_path)):
            if not path:
                self.report({"ERROR"}, f"No {label} chosen: pick one in the InvRender panel")
                return {"CANCELLED"}
        return run_synchronously(self, context, settings_from_props(context, props.photo_path, with_maps=True))


classes = (INVR_OT_import_photo, INVR_OT_import_rgbd)
