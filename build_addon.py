"""Build the installable Blender extension zip.

    .venv/bin/python build_addon.py --output-dir dist                        # all platforms, one zip
    .venv/bin/python build_addon.py --output-dir dist --platform linux-x64   # one platform's zip

The zip holds the add-on (addon/ at the zip's root, manifest included) and, in wheels/, a wheel of this project
(`invrender_core` with its shipped network weights) plus the third-party wheels the core needs that Blender does
not ship: the project's dependencies except numpy (part of Blender) and torch (too large and platform-specific:
the add-on installs it on request). Those wheels are for Blender's Python (CPython 3.11) on each platform, at the
versions installed in the running environment, so the extension ships what the tests ran with. Downloads are
cached in build/wheels/, so a rebuild is offline. The manifest in the zip lists the platforms and the wheels.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "addon"
WHEEL_CACHE = ROOT / "build" / "wheels"  # /build/ is ignored by git
PYTHON_VERSION = "3.11"  # Blender 4.2 LTS to 5.0
# Dependencies not bundled: Blender ships numpy; PyTorch is installed by the add-on ("Install PyTorch").
NOT_BUNDLED = {"numpy", "torch"}
# Blender platform -> the wheel platform tags pip may pick for it. Linux: glibc 2.28 (Blender's own minimum);
# pip does not expand manylinux_2_28 to older glibc versions itself, so they are listed. macOS: 12 on Apple
# silicon (scipy's oldest arm64 wheels need it); pip expands the macosx tag to older releases and universal2.
PLATFORM_TAGS = {
    "linux-x64": [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + ["manylinux2014_x86_64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": ["macosx_12_0_arm64"],
}
PLATFORMS = tuple(PLATFORM_TAGS)
DOWNLOAD_TIMEOUT_S = 600  # one wheel; pip's --timeout and --retries make an unreachable index fail in a minute
WEIGHTS_IN_WHEEL = "invrender_core/data/weights/"


def bundled_requirements() -> list[tuple[str, str]]:
    """(distribution name, version) of each third-party wheel to bundle: the project's dependencies minus
    NOT_BUNDLED, at the versions installed here."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.match(r"[A-Za-z0-9._-]+", dep).group(0) for dep in deps]
    result = []
    for name in names:
        if name.lower() in NOT_BUNDLED:
            continue
        try:
            result.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(f"{name} is not installed here, so its tested version is unknown: run "
                               f"`make setup` first") from None
    return result


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _tag_fits(tag: str, platform: str) -> bool:
    """Whether wheel platform tag `tag` runs on Blender platform `platform` (at its minimum OS version)."""
    if tag == "any":
        return True
    if platform == "linux-x64":
        m = re.fullmatch(r"manylinux_2_(\d+)_x86_64", tag)
        return bool(m and int(m.group(1)) <= 28) or tag in {"manylinux1_x86_64", "manylinux2010_x86_64",
                                                              "manylinux2014_x86_64"}
    if platform == "windows-x64":
        return tag == "win_amd64"
    if platform == "macos-arm64":
        m = re.fullmatch(r"macosx_(\d+)_(\d+)_(arm64|universal2)", tag)
        return bool(m and (int(m.group(1)), int(m.group(2))) <= (12, 0))
    raise ValueError(f"unknown platform {platform!r}: use one of {', '.join(PLATFORMS)}")


def _python_fits(python_tags: str, abi_tags: str) -> bool:
    """Whether a wheel's python and ABI tags load in CPython 3.11."""
    for py in python_tags.split("."):
        for abi in abi_tags.split("."):
            if (py, abi) == ("cp311", "cp311") or (py in {"py3", "py311"} and abi == "none"):
                return True
            m = re.fullmatch(r"cp3(\d+)", py)
            if m and abi == "abi3" and int(m.group(1)) <= 11:
                return True
    return False


def wheel_fits(filename: str, name: str, version: str, platform: str) -> bool:
    """Whether wheel `filename` is distribution `name` at `version` for CPython 3.11 on Blender `platform`."""
    parts = filename.removesuffix(".whl").split("-")
    if not filename.endswith(".whl") or len(parts) not in (5, 6):
        return False
    dist, ver, python_tags, abi_tags, platform_tags = parts[0], parts[1], parts[-3], parts[-2], parts[-1]
    return (_normalise(dist) == _normalise(name) and ver == version and _python_fits(python_tags, abi_tags)
            and any(_tag_fits(tag, platform) for tag in platform_tags.split(".")))


def is_pure(filename: str) -> bool:
    """A pure-Python wheel (platform tag "any"): one file serves every platform."""
    return filename.removesuffix(".whl").split("-")[-1] == "any"


def _pip_download(name: str, version: str, platform: str, dest: Path) -> None:
    """Download the wheel of `name`==`version` for `platform` into `dest`, a folder in the wheel cache
    (RuntimeError, one line, on failure)."""
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
               "--python-version", PYTHON_VERSION, "--implementation", "cp",
               *[arg for tag in PLATFORM_TAGS[platform] for arg in ("--platform", tag)],
               "--timeout", "20", "--retries", "1", "--disable-pip-version-check", "--progress-bar", "off",
               "--dest", str(dest), f"{name}=={version}"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"downloading {name}=={version} for {platform} took over {DOWNLOAD_TIMEOUT_S} s: "
                           f"check the network, or put the wheel in {dest.parent}") from None
    if out.returncode != 0:
        lines = [line.strip() for line in (out.stderr + out.stdout).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")
        if any("connection" in line.lower() for line in lines):  # pip's "no matching distribution" hides this
            reason = f"the package index is unreachable ({reason})"
        raise RuntimeError(f"no wheel of {name}=={version} for {platform} (CPython {PYTHON_VERSION}) could be "
                           f"downloaded: {reason}. Check the network, or put the wheel in {dest.parent}")


def third_party_wheels(platforms: list[str], cache: Path = WHEEL_CACHE) -> list[Path]:
    """The bundled wheels for `platforms`, from `cache`, downloading only what it lacks; a pure-Python wheel once."""
    cache.mkdir(parents=True, exist_ok=True)
    found: list[Path] = []
    for name, version in bundled_requirements():
        for platform in platforms:
            cached = [p for p in sorted(cache.glob("*.whl")) if wheel_fits(p.name, name, version, platform)]
            if not cached:
                with tempfile.TemporaryDirectory(dir=cache) as tmp:
                    _pip_download(name, version, platform, Path(tmp))
                    for wheel in Path(tmp).glob("*.whl"):
                        wheel.replace(cache / wheel.name)
                cached = [p for p in sorted(cache.glob("*.whl")) if wheel_fits(p.name, name, version, platform)]
                if not cached:
                    raise RuntimeError(f"pip downloaded no usable wheel of {name}=={version} for {platform}")
            # A pure wheel serves every platform; else the last by name, so that a rebuild picks the same one.
            wheel = next((p for p in cached if is_pure(p.name)), cached[-1])
            if wheel not in found:
                found.append(wheel)
    return found


def build_project_wheel(out_dir: Path) -> Path:
    """A pure-Python wheel of this project (invrender_core and its shipped weights), built without dependencies.

    Built from a clean copy of the sources: setuptools reuses build/lib, where files deleted from the project
    would linger and end up in the wheel.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        for name in ("invrender_core", "addon"):
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        # No build isolation: works offline, with the setuptools the test extras install.
        out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                              "--disable-pip-version-check", "-w", str(out_dir), str(src)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"building the project's wheel failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    wheels = sorted(out_dir.glob("invrender-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one invrender wheel in {out_dir}, found {wheels}")
    check_shipped_weights(wheels[0])
    return wheels[0]


def check_shipped_weights(wheel: Path) -> None:
    """RuntimeError unless every file of invrender_core/data/weights is in `wheel`, byte for byte."""
    folder = ROOT / WEIGHTS_IN_WHEEL
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for path in sorted(folder.iterdir()):
            member = WEIGHTS_IN_WHEEL + path.name
            if path.is_file() and (member not in names or zf.read(member) != path.read_bytes()):
                raise RuntimeError(f"{wheel.name} lacks {member} (or holds another version of it): check "
                                   f"[tool.setuptools.package-data] in pyproject.toml")


def manifest_text(wheel_names: list[str], platforms: list[str]) -> str:
    """addon/blender_manifest.toml with `platforms` narrowed to `platforms` and the `wheels` list added."""
    text = (ADDON / "blender_manifest.toml").read_text()
    manifest = tomllib.loads(text)
    if "wheels" in manifest:
        raise RuntimeError("addon/blender_manifest.toml must not list wheels: build_addon.py adds them")
    unknown = sorted(set(platforms) - set(manifest.get("platforms", ())))
    if unknown:
        raise RuntimeError(f"platforms {unknown} are not in addon/blender_manifest.toml's platforms")
    text, count = re.subn(r"(?m)^platforms = \[.*\]$", "platforms = [" + ", ".join(f'"{p}"' for p in platforms)
                          + "]", text)
    if count != 1:
        raise RuntimeError("addon/blender_manifest.toml must list its platforms on one line: platforms = [...]")
    listed = ", ".join(f'"./wheels/{name}"' for name in wheel_names)
    # Top-level keys must come before the first table ([permissions]).
    head, sep, tail = text.partition("\n[")
    return f"{head}\nwheels = [{listed}]\n{sep}{tail}"


def zip_name(platforms: list[str]) -> str:
    """`<id>-<version>.zip`, or with one platform `<id>-<version>-<platform>.zip` (as Blender's split build)."""
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    suffix = f"-{platforms[0].replace('-', '_')}" if len(platforms) == 1 else ""
    return f"{manifest['id']}-{manifest['version']}{suffix}.zip"


def build(output_dir: Path, platforms: list[str] | None = None, cache: Path = WHEEL_CACHE) -> Path:
    """Build the extension zip for `platforms` (default all) into `output_dir`; returns its path."""
    platforms = list(dict.fromkeys(platforms or PLATFORMS))
    for platform in platforms:
        if platform not in PLATFORM_TAGS:
            raise ValueError(f"unknown platform {platform!r}: use one of {', '.join(PLATFORMS)}")
    wheels = third_party_wheels(platforms, cache)
    output_dir.mkdir(parents=True, exist_ok=True)
    zip_path = output_dir / zip_name(platforms)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = [build_project_wheel(Path(tmp)), *wheels]
        tmp_zip = output_dir / f".{zip_path.name}.tmp"
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(ADDON.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.name != "blender_manifest.toml":
                    zf.write(path, path.relative_to(ADDON).as_posix())
            zf.writestr("blender_manifest.toml", manifest_text([w.name for w in wheels], platforms))
            for wheel in wheels:
                zf.write(wheel, f"wheels/{wheel.name}", compress_type=zipfile.ZIP_STORED)  # wheels are zips
        tmp_zip.replace(zip_path)
    return zip_path


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the InvRender Blender extension zip.")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--platform", action="append", choices=PLATFORMS, dest="platforms",
                        help="build for this platform only (repeatable; default: all, in one zip)")
    args = parser.parse_args()
    try:
        print(build(args.output_dir, args.platforms))
    except RuntimeError as e:
        sys.exit(f"build_addon.py: {e}")


if __name__ == "__main__":
    main()
