"""The built extension zip installs into a clean Blender user profile and registers its UI."""

import subprocess
import sys
import tomllib
import zipfile

import build_addon

INSTALL_SCRIPT = """
import sys, bpy
result = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default",
                                                  enable_on_install=True)
print("installed", result == {"FINISHED"})
print("enabled", "bl_ext.user_default.invrender" in bpy.context.preferences.addons)
print("operator", hasattr(bpy.types, "INVR_OT_import_rgbd"))
print("panel", hasattr(bpy.types, "VIEW3D_PT_invr_photo"))
"""


def test_zip_installs_and_registers(tmp_path):
    zip_path = build_addon.build(tmp_path / "dist")
    with zipfile.ZipFile(zip_path) as zf:
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert all(name in zf.namelist() for name in ("__init__.py", "build/scene.py", *[
            w.removeprefix("./") for w in manifest["wheels"]]))
    assert len(manifest["tagline"]) <= 64  # Blender refuses longer taglines

    script = tmp_path / "install.py"
    script.write_text(INSTALL_SCRIPT)
    env = {"BLENDER_USER_RESOURCES": str(tmp_path / "profile"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(script), str(zip_path)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    for key in ("installed", "enabled", "operator", "panel"):
        assert lines.get(key) == "True", f"{key}: {out.stdout}\n{out.stderr[-2000:]}"
    # The bundled wheel put the core where Blender's extensions find their packages.
    site = tmp_path / "profile" / "extensions" / ".local" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert (site / "site-packages" / "invrender_core" / "sh.py").is_file()
