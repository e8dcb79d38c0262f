"""Add-on preferences and "Install PyTorch" under real Blender (the bpy module, background mode, offline)."""

import sys
import textwrap

import bpy
import invrender_addon
import pytest
from invrender_addon import deps, prefs


@pytest.fixture
def enabled(registered_addon):
    """The add-on listed as enabled, so that its AddonPreferences instance exists (as after enabling it)."""
    addon = bpy.context.preferences.addons.new()
    addon.module = prefs.ADDON_PACKAGE
    yield addon.preferences
    bpy.context.preferences.addons.remove(addon)


@pytest.fixture
def torch_folder(tmp_path, monkeypatch):
    """PyTorch's install folder in tmp_path. Request it before `registered_addon`, so that unregister still sees it."""
    folder = tmp_path / "user" / "site-packages"

    def in_tmp(create=False):
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    monkeypatch.setattr(prefs, "torch_folder", in_tmp)
    return folder


def test_defaults_without_registered_preferences(registered_addon):
    assert bpy.context.preferences.addons.get(prefs.ADDON_PACKAGE) is None
    # Not an extension here, so no extension folder: None lets the core use its own default folder.
    assert prefs.get_preferences(bpy.context) == prefs.Preferences(device="auto", weights_dir=None)


def test_preferences_reach_the_add_on(enabled, tmp_path):
    assert type(enabled).__name__ == "INVR_AddonPreferences"
    assert (enabled.device, enabled.weights_dir) == ("AUTO", "")
    enabled.device, enabled.weights_dir = "MPS", str(tmp_path)
    assert prefs.get_preferences(bpy.context) == prefs.Preferences(device="mps", weights_dir=tmp_path)
    enabled.device, enabled.weights_dir = "CUDA", ""
    assert prefs.get_preferences() == prefs.Preferences(device="cuda", weights_dir=None)


def test_install_is_refused_offline_and_names_the_manual_command(torch_folder, registered_addon):
    assert bpy.app.online_access is False  # the bpy module runs offline
    with pytest.raises(RuntimeError, match='enable "Allow Online Access" in Preferences > System') as error:
        bpy.ops.invr.install_torch(variant="CPU")
    manual = deps.command_text(deps.pip_install_command(torch_folder, "cpu"))
    assert str(error.value).rstrip().endswith(f"install PyTorch manually with: {manual}")
    assert not torch_folder.exists()  # nothing started, nothing created


def test_register_puts_the_torch_folder_on_sys_path(torch_folder):
    torch_folder.mkdir(parents=True)
    invrender_addon.register()
    try:
        assert sys.path.count(str(torch_folder)) == 1
    finally:
        invrender_addon.unregister()
    assert str(torch_folder) not in sys.path


def _fake_pip(tmp_path, monkeypatch, body):
    """Online, with pip played by a script that gets the target folder."""
    script = tmp_path / "fake_pip.py"
    script.write_text(textwrap.dedent(body))
    monkeypatch.setattr(prefs, "online_access", lambda: True)
    monkeypatch.setattr(deps, "pip_install_command", lambda target, variant: [sys.executable, str(script),
                                                                             str(target), variant])


def test_install_runs_pip_synchronously_and_makes_the_folder_importable(torch_folder, registered_addon, tmp_path,
                                                                         monkeypatch, capsys):
    _fake_pip(tmp_path, monkeypatch, """
        import sys
        from pathlib import Path
        print("Collecting torch==2.13.0")
        (Path(sys.argv[1]) / "invr_fake_torch.py").write_text(f"VARIANT = {sys.argv[2]!r}")
        print("Successfully installed torch-2.13.0")
    """)
    assert str(torch_folder) not in sys.path  # it did not exist when the add-on was registered
    assert bpy.ops.invr.install_torch(variant="CUDA") == {"FINISHED"}
    assert "pip: Successfully installed torch-2.13.0" in capsys.readouterr().out
    try:
        import invr_fake_torch

        assert invr_fake_torch.VARIANT == "cuda"
    finally:
        sys.modules.pop("invr_fake_torch", None)
    assert prefs._Install.run is None and prefs._Install.outcome.startswith("Installed PyTorch 2.13.0 (CUDA)")
    assert bpy.ops.invr.install_torch.poll()  # another install may start


def test_failed_install_reports_pips_last_line(torch_folder, registered_addon, tmp_path, monkeypatch):
    _fake_pip(tmp_path, monkeypatch, """
        import sys
        print("Looking in indexes: https://download.pytorch.org/whl/cu130")
        print("ERROR: No matching distribution found for torch==2.13.0")
        sys.exit(1)
    """)
    with pytest.raises(RuntimeError, match=r"pip failed \(exit code 1\): ERROR: No matching distribution found for "
                                           r"torch==2.13.0$"):
        bpy.ops.invr.install_torch(variant="CPU")
    assert prefs._Install.run is None and prefs._Install.outcome.startswith("pip failed")


ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())


class Recorder:
    """Stands in for a UILayout: records what is drawn (a typo in a property or icon name fails like in Blender)."""

    def __init__(self, drawn=None):
        self.drawn = [] if drawn is None else drawn
        self.enabled = True
        self.use_property_split = False

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, name
        self.drawn.append(("prop", name))

    def label(self, text="", icon="NONE"):
        assert len(text) <= 80, text  # Blender's labels do not wrap
        assert icon in ICONS, icon
        self.drawn.append(("label", text))

    def operator(self, idname, text="", icon="NONE"):
        assert hasattr(bpy.ops.invr, idname.split(".")[1]), idname
        assert icon in ICONS, icon
        self.drawn.append(("operator", text))
        return type("OperatorProperties", (), {})()

    def box(self, **kw):
        return Recorder(self.drawn)

    row = column = box


def test_device_and_models_panel_draws(torch_folder, enabled):
    layout = Recorder()
    prefs.draw_device_and_models(layout, bpy.context)
    assert layout.drawn[:2] == [("prop", "device"), ("prop", "weights_dir")]
    texts = [text for _, text in layout.drawn]
    assert f"PyTorch {deps.torch_status().version}" in texts and "Install PyTorch (CPU)" in texts
    assert any("Allow Online Access" in t for t in texts)  # offline: the buttons are disabled and it says why
    layout = Recorder()
    prefs.draw_torch(layout, load=True)  # the preferences' box: PyTorch loaded, so CUDA and MPS are known
    import torch

    mps = "available" if torch.backends.mps.is_available() else "not available"
    assert ("label", f"Apple MPS: {mps}") in layout.drawn
