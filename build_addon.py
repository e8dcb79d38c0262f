"""Build the installable Blender extension zip.

    .venv/bin/python build_addon.py --output-dir dist

The zip holds the add-on (addon/ at the zip's root, manifest included) and, in wheels/, a wheel of this
project so that `invrender_core` is importable inside Blender; the manifest in the zip lists it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "addon"


def build_project_wheel(out_dir: Path) -> Path:
    """A pure-Python wheel of this project (invrender_core), built by pip without dependencies."""
    # No build isolation: works offline, with the setuptools the test extras install.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out_dir), str(ROOT)], check=True)
    wheels = sorted(out_dir.glob("invrender-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one invrender wheel in {out_dir}, found {wheels}")
    return wheels[0]


def manifest_with_wheels(wheel_names: list[str]) -> str:
    text = (ADDON / "blender_manifest.toml").read_text()
    if "wheels" in tomllib.loads(text):
        raise RuntimeError("addon/blender_manifest.toml must not list wheels: build_addon.py adds them")
    listed = ", ".join(f'"./wheels/{name}"' for name in wheel_names)
    # Top-level keys must come before the first table ([permissions]).
    head, sep, tail = text.partition("\n[")
    return f"{head}\nwheels = [{listed}]\n{sep}{tail}"


def build(output_dir: Path) -> Path:
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    output_dir.mkdir(parents=True, exist_ok=True)
    zip_path = output_dir / f"{manifest['id']}-{manifest['version']}.zip"
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_project_wheel(Path(tmp))
        tmp_zip = output_dir / f".{zip_path.name}.tmp"
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(ADDON.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.name != "blender_manifest.toml":
                    zf.write(path, path.relative_to(ADDON).as_posix())
            zf.writestr("blender_manifest.toml", manifest_with_wheels([wheel.name]))
            zf.write(wheel, f"wheels/{wheel.name}")
        tmp_zip.replace(zip_path)
    return zip_path


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the InvRender Blender extension zip.")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    print(build(parser.parse_args().output_dir))


if __name__ == "__main__":
    main()
