"""pyproject.toml lists every package, so wheels (and the Blender extension) carry all of the core."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_core_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "invrender_core").rglob("__init__.py")}
    on_disk |= {"invrender_addon" + ".".join(("",) + p.parent.relative_to(ROOT / "addon").parts)
                for p in (ROOT / "addon").rglob("__init__.py")}
    assert on_disk == listed
