"""The built extension zip: its manifest, and an install into a clean Blender profile that has only what Blender
itself ships (bpy, numpy), where the bundled wheels, the preferences and the shipped weights must work."""

import ast
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

import build_addon

ROOT = Path(__file__).resolve().parents[1]
PKG = "bl_ext.user_default.invrender"
# Blender's standalone extension tool (the code behind `blender --command extension validate`), shipped with bpy.
BPY_VERSION = ".".join(importlib.metadata.version("bpy").split(".")[:2])
BLENDER_EXT = (Path(sysconfig.get_paths()["purelib"]) / "bpy" / BPY_VERSION / "scripts" / "addons_core" / "bl_pkg"
               / "cli" / "blender_ext.py")
# What Blender's own Python has besides the standard library: bpy and numpy (the bundled wheels bring the rest).
BLENDER_SHIPS = ("bpy", "numpy", "numpy.libs", "zstandard")


def fake_wheels(cache: Path, pure: str) -> None:
    """Empty stand-ins, named as pip names them, for every bundled wheel and platform; `pure` as one any-wheel."""
    tags = {"linux-x64": "manylinux_2_17_x86_64.manylinux2014_x86_64", "windows-x64": "win_amd64",
            "macos-arm64": "macosx_11_0_arm64"}
    cache.mkdir(parents=True)
    for name, version in build_addon.bundled_requirements():
        stem = f"{build_addon._normalise(name)}-{version}"
        names = [f"{stem}-py3-none-any.whl"] if name == pure else [f"{stem}-cp311-cp311-{t}.whl" for t in tags.values()]
        for wheel in names:
            with zipfile.ZipFile(cache / wheel, "w") as zf:
                zf.writestr("placeholder", "")


@pytest.fixture
def offline(monkeypatch):
    def no_download(name, version, platform, dest):
        raise AssertionError(f"downloaded {name} for {platform} although the cache had it")

    monkeypatch.setattr(build_addon, "_pip_download", no_download)


@pytest.mark.parametrize("platforms", [None, ["windows-x64"]])
def test_manifest_lists_platforms_wheels_and_permissions(tmp_path, offline, platforms):
    """A build from a filled wheel cache (no download): the manifest Blender validates names the chosen platforms,
    the permissions, and exactly the wheels in the zip, a pure-Python wheel once."""
    cache = tmp_path / "cache"
    fake_wheels(cache, pure="safetensors")
    zip_path = build_addon.build(tmp_path / "dist", platforms, cache=cache)
    expected_platforms = platforms or ["linux-x64", "windows-x64", "macos-arm64"]
    assert zip_path.name == ("invrender-0.1.0.zip" if platforms is None else "invrender-0.1.0-windows_x64.zip")

    out = subprocess.run([sys.executable, str(BLENDER_EXT), "validate", str(zip_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr

    with zipfile.ZipFile(zip_path) as zf:
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        in_zip = {n for n in zf.namelist() if n.startswith("wheels/")}
    assert manifest["platforms"] == expected_platforms
    assert set(manifest["permissions"]) == {"files", "network"}
    assert "PyTorch" in manifest["permissions"]["network"]
    listed = [w.removeprefix("./") for w in manifest["wheels"]]
    assert len(listed) == len(set(listed)) and set(listed) == in_zip
    expected = {"invrender-0.1.0-py3-none-any.whl",
                f"safetensors-{importlib.metadata.version('safetensors')}-py3-none-any.whl"}
    for name, version in build_addon.bundled_requirements():
        if name != "safetensors":
            for platform in expected_platforms:
                expected |= {w.name for w in cache.glob("*.whl") if build_addon.wheel_fits(w.name, name, version,
                                                                                             platform)}
    assert {w.removeprefix("wheels/") for w in in_zip} == expected
    assert len(expected) == 2 + (len(build_addon.bundled_requirements()) - 1) * len(expected_platforms)
    assert not any(w.startswith(("wheels/numpy", "wheels/torch")) for w in in_zip)


def test_bundled_wheels_cover_the_cores_imports():
    """Every third-party module the core imports (training code aside) is bundled, in Blender (numpy), or torch."""
    bundled = {build_addon._normalise(name) for name, _ in build_addon.bundled_requirements()}
    dists = importlib.metadata.packages_distributions()
    modules = set()
    for path in (ROOT / "invrender_core").rglob("*.py"):
        if "train" in path.relative_to(ROOT).parts:  # training runs outside Blender
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    own = {"invrender_core", "invrender_addon"}  # in the project's wheel
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m not in own}
    assert {"cv2", "scipy", "pyamg", "safetensors", "PIL"} <= third_party
    for module in third_party - {"numpy", "torch"}:
        assert any(build_addon._normalise(d) in bundled for d in dists[module]), f"{module} is not bundled"


def test_wheel_tags_for_each_platform():
    fits = build_addon.wheel_fits
    assert fits("scipy-1.14.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "scipy", "1.14.1",
                "linux-x64")
    assert fits("pillow-13.0.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "Pillow", "13.0.0",
                "linux-x64")
    assert not fits("x-1-cp311-cp311-manylinux_2_34_x86_64.whl", "x", "1", "linux-x64")  # newer glibc than Blender's
    assert not fits("x-1-cp311-cp311-manylinux_2_28_aarch64.whl", "x", "1", "linux-x64")
    assert fits("opencv_python_headless-4.10.0.84-cp37-abi3-win_amd64.whl", "opencv-python-headless", "4.10.0.84",
                "windows-x64")
    assert fits("x-1-cp311-cp311-macosx_10_9_universal2.whl", "x", "1", "macos-arm64")
    assert not fits("x-1-cp311-cp311-macosx_14_0_arm64.whl", "x", "1", "macos-arm64")
    assert not fits("x-1-cp312-cp312-win_amd64.whl", "x", "1", "windows-x64")  # another Python
    assert not fits("x-1-cp312-abi3-win_amd64.whl", "x", "1", "windows-x64")  # stable ABI from 3.12 on
    assert not fits("x-2-py3-none-any.whl", "x", "1", "windows-x64")  # another version
    assert fits("x-1-py3-none-any.whl", "x", "1", "macos-arm64") and build_addon.is_pure("x-1-py3-none-any.whl")


def test_unreachable_index_fails_with_a_clear_message(tmp_path, monkeypatch):
    """pip pointed at a closed port (no config, no local wheels): one line naming the wheel, and no zip."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    name, version = build_addon.bundled_requirements()[0]
    expected = (rf"^no wheel of {name}=={version} for windows-x64 \(CPython 3.11\) could be downloaded: the package "
                rf"index is unreachable .+ Check the network, or put the wheel in ")
    with pytest.raises(RuntimeError, match=expected):
        build_addon.build(tmp_path / "dist", ["windows-x64"], cache=tmp_path / "cache")
    assert not (tmp_path / "dist").exists() and not list((tmp_path / "cache").iterdir())


def test_unknown_platform_is_refused(tmp_path, offline):
    with pytest.raises(ValueError, match="linux-x64"):
        build_addon.build(tmp_path, ["linux-arm64"], cache=tmp_path)


INSTALL_SCRIPT = r"""
import hashlib, importlib.resources, importlib.util, json, sys, tempfile
from pathlib import Path
import numpy as np
import bpy

zip_path, pkg = sys.argv[1], sys.argv[2]
out = {"torch_absent": importlib.util.find_spec("torch") is None}
result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
out["installed"] = result == {"FINISHED"}
addon = bpy.context.preferences.addons.get(pkg)
out["enabled"] = addon is not None
out["preferences"] = type(addon.preferences).__name__ if addon is not None else None
out["device"] = addon.preferences.device if addon is not None else None
out["classes"] = [hasattr(bpy.types, n)
                  for n in ("INVR_OT_import_rgbd", "VIEW3D_PT_invr_photo", "INVR_OT_install_torch")]
prefs = sys.modules[pkg + ".prefs"]
out["weights_dir"] = str(prefs.get_preferences(bpy.context).weights_dir)
out["torch_folder"] = str(prefs.torch_folder())
out["torch_folder_on_path"] = out["torch_folder"] in sys.path
import invr_probe  # a module the test put into the PyTorch folder before the install
out["probe"] = invr_probe.__file__

import cv2, scipy, safetensors, pyamg, PIL, invrender_core
out["files"] = {m.__name__: m.__file__ for m in (cv2, scipy, safetensors, pyamg, PIL, invrender_core)}
# The bundled builds work with Blender's numpy: an EXR round trip through OpenCV, a sparse solve, an AMG solver.
import scipy.sparse as sp, scipy.sparse.linalg as spla, pyamg.aggregation
from invrender_core.io import read_exr, write_exr
from invrender_core import fusion
image = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
with tempfile.TemporaryDirectory() as tmp:
    write_exr(Path(tmp) / "a.exr", image)
    out["exr_round_trip"] = bool(np.array_equal(read_exr(Path(tmp) / "a.exr"), image))
laplacian = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(50, 50), format="csr")
x = np.arange(50.0)
out["spsolve"] = float(np.abs(spla.spsolve(laplacian.tocsc(), laplacian @ x) - x).max())
amg = pyamg.smoothed_aggregation_solver(laplacian)
out["amg"] = float(np.abs(amg.solve(laplacian @ x, tol=1e-12) - x).max())

weights = importlib.resources.files("invrender_core") / "data" / "weights"
registry = json.loads((weights / "registry.json").read_text())
out["weights_folder"] = str(weights)
out["weights"] = {name: hashlib.sha256((weights / e["file"]).read_bytes()).hexdigest() == e["sha256"]
                  and (weights / e["card_file"]).is_file() for name, e in registry["models"].items()}

try:
    bpy.ops.invr.install_torch(variant="CPU")
    out["install_refused"] = None
except RuntimeError as e:
    out["install_refused"] = str(e)

bpy.ops.preferences.addon_disable(module=pkg)
out["torch_folder_on_path_after_disable"] = out["torch_folder"] in sys.path
print("RESULT " + json.dumps(out))
"""


def _blender_like_path(folder: Path) -> Path:
    """A folder with only what Blender's Python has (bpy, numpy): the venv's scipy, cv2, torch stay out of sight."""
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for name in BLENDER_SHIPS:
        if (site / name).exists():
            (folder / name).symlink_to(site / name)
    return folder


def test_zip_installs_with_its_wheels_into_a_blender_without_them(tmp_path):
    """Build for linux-x64 (downloads from PyPI into build/wheels once), install into a clean profile of a
    Python that has only what Blender ships, and check wheels, preferences, PyTorch folder and weights there."""
    if sys.platform != "linux":
        pytest.skip("the install test builds the linux-x64 zip")
    start = time.monotonic()
    try:
        zip_path = build_addon.build(tmp_path / "dist", ["linux-x64"])
    except RuntimeError as e:
        pytest.fail(f"building the zip failed (is PyPI reachable?): {e}")
    built_s = time.monotonic() - start
    with zipfile.ZipFile(zip_path) as zf:
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        assert manifest["platforms"] == ["linux-x64"]
        assert {w.removeprefix("./") for w in manifest["wheels"]} <= set(zf.namelist())

    profile = tmp_path / "profile"
    user_folder = profile / "extensions" / ".user" / "user_default" / "invrender"
    (user_folder / "site-packages").mkdir(parents=True)
    (user_folder / "site-packages" / "invr_probe.py").write_text("")
    script = tmp_path / "install.py"
    script.write_text(INSTALL_SCRIPT)
    env = {"BLENDER_USER_RESOURCES": str(profile), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(_blender_like_path(tmp_path / "blender_python")), "HOME": str(tmp_path)}
    # -S: none of the venv's site-packages, as in Blender, whose Python has no scipy, OpenCV or torch.
    out = subprocess.run([sys.executable, "-S", str(script), str(zip_path), PKG], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    result = next((json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")), None)
    assert result is not None, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    print(f"build {built_s:.1f} s, install and checks {time.monotonic() - start - built_s:.1f} s")
    for module, file in result["files"].items():
        print(f"{module}: {file}")

    assert result["torch_absent"]
    assert result["installed"] and result["enabled"] and all(result["classes"]), result
    assert (result["preferences"], result["device"]) == ("INVR_AddonPreferences", "AUTO")
    site = profile / "extensions" / ".local" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = site / "site-packages"
    for module, file in result["files"].items():
        assert Path(file).is_relative_to(site), f"{module} comes from {file}, not from the extension's wheels"
    assert result["exr_round_trip"] and result["spsolve"] < 1e-9 and result["amg"] < 1e-6, result
    assert result["weights"] == {"irn-small": True, "depth-small": True, "relight-refine-small": True,
                                 "shadow-refine-small": True, "photo-shadow-small": True, "face-corr-small": True}
    assert Path(result["weights_folder"]).is_relative_to(site)

    assert Path(result["weights_dir"]) == user_folder / "models" and (user_folder / "models").is_dir()
    assert Path(result["torch_folder"]) == user_folder / "site-packages"
    assert result["torch_folder_on_path"] and Path(result["probe"]).parent == user_folder / "site-packages"
    assert not result["torch_folder_on_path_after_disable"]
    refusal = result["install_refused"]
    assert refusal is not None and "Allow Online Access" in refusal and str(user_folder / "site-packages") in refusal


def test_project_wheel_holds_the_shipped_weights(tmp_path):
    wheel = build_addon.build_project_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        registry = json.loads(zf.read("invrender_core/data/weights/registry.json"))
        for entry in registry["models"].values():
            data = zf.read(f"invrender_core/data/weights/{entry['file']}")
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert f"invrender_core/data/weights/{entry['card_file']}" in names
    # Built from a clean copy of the sources: nothing but what is in the project now.
    on_disk = {p.relative_to(ROOT / "addon").as_posix() for p in (ROOT / "addon").rglob("*.py")}
    in_wheel = {n.removeprefix("invrender_addon/") for n in names if n.startswith("invrender_addon/")}
    assert in_wheel == on_disk
