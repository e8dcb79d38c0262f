"""Add-on preferences: the device the networks run on, the weights folder, and PyTorch (status and install).

The rest of the add-on reads the choices through `get_preferences(context)`. PyTorch is installed on request by
`INVR_OT_install_torch` (pip, run by Blender's Python, into the extension's user folder); the bpy-free part of that
lives in deps.py.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import bpy

from . import deps

# The add-on's root package: "bl_ext.<repo>.invrender" as an extension, "invrender_addon" in the tests. This module
# sits directly in the root package, so its __package__ is the root (a module in a sub-package would need a parent).
ADDON_PACKAGE = __package__

DEVICE_ITEMS = (
    ("AUTO", "Auto", "CUDA when PyTorch sees an NVIDIA GPU, Apple MPS on an Apple silicon Mac, else the CPU"),
    ("CPU", "CPU", "Run the networks on the CPU: works everywhere, slowest"),
    ("CUDA", "CUDA", "Run the networks on an NVIDIA GPU (needs the CUDA build of PyTorch)"),
    ("MPS", "Apple MPS", "Run the networks on the GPU of an Apple silicon Mac"),
)
VARIANT_ITEMS = (
    ("CPU", "CPU", "The CPU build (about 200 MB); on a Mac it also drives the GPU through Apple MPS"),
    ("CUDA", "CUDA", "The NVIDIA CUDA build for Linux and Windows (several GB)"),
)
_WRAP = 64  # characters per label line for long paths and commands


@dataclass(frozen=True)
class Preferences:
    """The add-on's settings as plain values.

    device: "auto", "cpu", "cuda" or "mps". weights_dir: the user's weights folder, None for InvRender's
    default one ($INVRENDER_WEIGHTS_DIR or ~/.local/share/invrender/models) when not running as an extension.
    """

    device: str = "auto"
    weights_dir: Path | None = None


def user_folder(name: str, create: bool = False) -> Path | None:
    """Folder `name` in the extension's user data (kept across updates); None when not installed as an extension."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, path=name, create=create))
    except ValueError:  # "does not name an extension": a legacy add-on install, or the tests' invrender_addon
        return None


def default_weights_dir(create: bool = True) -> Path | None:
    """The weights folder when the preference is empty: the extension's "models" folder (None if no extension)."""
    return user_folder("models", create)


def torch_folder(create: bool = False) -> Path:
    """Where "Install PyTorch" puts PyTorch: the extension's user "site-packages" folder, or for a legacy
    add-on install, invrender/site-packages in Blender's user data files."""
    folder = user_folder("site-packages", create)
    if folder is None:
        folder = Path(bpy.utils.user_resource("DATAFILES", path="invrender/site-packages", create=create))
    return folder


def addon_preferences(context) -> INVR_AddonPreferences | None:
    """The registered preferences of the enabled add-on; None when it is not enabled through Blender (tests)."""
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon is not None else None


def get_preferences(context=None) -> Preferences:
    """The chosen device and weights folder; the defaults when the add-on's preferences are not registered."""
    prefs = addon_preferences(context or bpy.context)
    if prefs is None:
        return Preferences(weights_dir=default_weights_dir())
    folder = Path(bpy.path.abspath(prefs.weights_dir)) if prefs.weights_dir else default_weights_dir()
    return Preferences(device=prefs.device.lower(), weights_dir=folder)


def online_access() -> bool:
    """Blender's "Allow Online Access" (Preferences > System); off in background mode unless asked for."""
    return bpy.app.online_access


# --- Install PyTorch ----------------------------------------------------------------------------------------

class _Install:
    """The one install that may run (pip as a child process) and the last outcome, for the panels."""

    run: deps.PipRun | None = None
    variant: str = ""
    outcome: str = ""  # one line after an install ended


def _redraw_panels(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas if window.screen else ():
            if area.type in {"PREFERENCES", "VIEW_3D"}:
                area.tag_redraw()


class INVR_OT_install_torch(bpy.types.Operator):
    """Install the pinned PyTorch with pip into the add-on's user folder (needs "Allow Online Access")"""

    bl_idname = "invr.install_torch"
    bl_label = "Install PyTorch"
    bl_options = {"REGISTER"}

    variant: bpy.props.EnumProperty(
        name="Build", description="Which build of PyTorch to install", items=VARIANT_ITEMS, default="CPU")

    @classmethod
    def poll(cls, context):
        if _Install.run is not None:
            cls.poll_message_set("PyTorch is being installed: wait for it or press Esc")
            return False
        return True

    def execute(self, context):
        folder = torch_folder()
        try:
            command = deps.pip_install_command(folder, self.variant.lower())
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        if not online_access():
            print(f"InvRender: install PyTorch from a terminal with:\n{deps.command_text(command)}")
            self.report({"ERROR"}, 'Online access is off: enable "Allow Online Access" in Preferences > System, '
                                   f"or install PyTorch manually with: {deps.command_text(command)}")
            return {"CANCELLED"}
        if not deps.pip_available():
            ensurepip = deps.command_text([sys.executable, "-m", "ensurepip"])
            self.report({"ERROR"}, f"Blender's Python has no pip: run {ensurepip} in a terminal, then install again")
            return {"CANCELLED"}
        torch_folder(create=True)
        print(f"InvRender: {deps.command_text(command)}")
        try:
            run = deps.PipRun(command)
        except OSError as e:
            self.report({"ERROR"}, f"Could not start pip ({e}): install PyTorch manually with: "
                                   f"{deps.command_text(command)}")
            return {"CANCELLED"}
        _Install.run, _Install.variant, _Install.outcome = run, self.variant, ""
        if bpy.app.background or context.window is None:
            try:
                run.wait(on_line=lambda line: print(f"pip: {line}"))
            except TimeoutError as e:
                return self._finish(context, error=str(e))
            return self._finish(context)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            _Install.run.cancel()
            self._stop_timer(context)
            return self._finish(context, error="Install cancelled: run it again to install PyTorch")
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        seen = len(_Install.run.lines)
        code = _Install.run.poll()
        for line in _Install.run.lines[seen:]:
            print(f"pip: {line}")
        _redraw_panels(context)
        if code is None:
            return {"RUNNING_MODAL"}
        self._stop_timer(context)
        return self._finish(context)

    def cancel(self, context):
        # Blender ends the operator (its window closed, a file loads): stop pip rather than leave it unwatched.
        if _Install.run is not None:
            _Install.run.cancel()
        self._stop_timer(context)
        _Install.run, _Install.outcome = None, "Install stopped: run it again to install PyTorch"

    def _stop_timer(self, context) -> None:
        context.window_manager.event_timer_remove(self._timer)

    def _finish(self, context, error: str | None = None) -> set[str]:
        run, _Install.run = _Install.run, None
        if error is None and run.returncode != 0:
            error = run.error_message()
        if error is not None:
            _Install.outcome = error
            self.report({"ERROR"}, error)
            return {"CANCELLED"}
        folder = torch_folder()
        deps.add_to_sys_path(folder)  # the folder may be new; if it was there already, look into it again
        deps.refresh()
        _Install.outcome = f"Installed PyTorch {deps.TORCH_VERSION} ({_Install.variant})"
        if "torch" in sys.modules:  # an import holds the earlier build until Blender restarts
            _Install.outcome += ": restart Blender to use it"
        self.report({"INFO"}, f"{_Install.outcome} in {folder}")
        if not bpy.app.background:
            _redraw_panels(context)
        return {"FINISHED"}


# --- Drawing (preferences and the sidebar panel) -------------------------------------------------------------

def _labels(layout, text: str, icon: str = "NONE") -> None:
    """`text` as wrapped label lines (Blender labels do not wrap)."""
    for i, line in enumerate(textwrap.wrap(text, _WRAP, break_on_hyphens=False) or [""]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


def draw_settings(layout, prefs: INVR_AddonPreferences) -> None:
    """Device and weights folder."""
    layout.prop(prefs, "device")
    layout.prop(prefs, "weights_dir")
    if not prefs.weights_dir:
        folder = default_weights_dir(create=False)
        _labels(layout, f"Empty: {folder}" if folder is not None else
                "Empty: $INVRENDER_WEIGHTS_DIR or ~/.local/share/invrender/models", icon="INFO")


def draw_torch(layout, load: bool = False) -> None:
    """The PyTorch box: version, CUDA / MPS, the install buttons or the running install, manual instructions.

    load: import PyTorch to learn its accelerators (the preferences do; the sidebar does not, to stay fast).
    """
    box = layout.box()
    box.label(text="PyTorch", icon="SCRIPT")
    status = deps.torch_status(load)
    for i, line in enumerate(status.lines()):
        box.label(text=line, icon=("CHECKMARK" if status.version and not status.error else "ERROR") if i == 0
                  else "BLANK1")
    if status.location:
        _labels(box, f"In {status.location}", icon="FILE_FOLDER")
    if _Install.run is not None:
        _labels(box, f"Installing PyTorch {deps.TORCH_VERSION} ({_Install.variant}), Esc to cancel", icon="TIME")
        _labels(box, _Install.run.last_line or "starting pip…", icon="BLANK1")
        return
    if _Install.outcome:
        _labels(box, _Install.outcome, icon="INFO")
    row = box.row(align=True)
    row.enabled = online_access()
    row.operator(INVR_OT_install_torch.bl_idname, text="Install PyTorch (CPU)", icon="IMPORT").variant = "CPU"
    if sys.platform != "darwin":
        row.operator(INVR_OT_install_torch.bl_idname, text="Install PyTorch (CUDA)", icon="IMPORT").variant = "CUDA"
    if not online_access() or status.version is None:
        if not online_access():
            _labels(box, 'Installing from here needs "Allow Online Access" (Preferences > System). Or install '
                    "from a terminal:", icon="INFO")
        else:
            _labels(box, "Or install from a terminal:", icon="INFO")
        _labels(box, deps.command_text(deps.pip_install_command(torch_folder(), "cpu")), icon="CONSOLE")


def draw_device_and_models(layout, context) -> None:
    """The sidebar's "Device & models" panel: the preferences' device and weights folder, then PyTorch."""
    prefs = addon_preferences(context)
    if prefs is None:
        layout.label(text="Enable InvRender in Preferences > Add-ons to choose the device", icon="INFO")
    else:
        draw_settings(layout, prefs)
    draw_torch(layout, load=False)


class INVR_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    device: bpy.props.EnumProperty(
        name="Device", description="Where the networks run", items=DEVICE_ITEMS, default="AUTO")
    weights_dir: bpy.props.StringProperty(
        name="Weights folder", description="Folder of network weights (registry.json and .safetensors files), "
        "looked up before the weights shipped with InvRender; empty: the extension's own models folder",
        subtype="DIR_PATH", default="")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        draw_settings(layout, self)
        draw_torch(layout, load=True)


classes = (INVR_OT_install_torch, INVR_AddonPreferences)
