"""The `invrender` command: help, fuse, and the one-line error convention."""

import json

import numpy as np
import pytest

from invrender_core import cli
from invrender_core.camera import Camera
from invrender_core.io import read_exr, write_exr


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fuse", "scene"):
        assert command in out


@pytest.fixture
def plane_maps(tmp_path):
    """A fronto-parallel plane at depth 2 with 1 % noise and exact normals, as files."""
    camera = Camera.from_fov(40, 30, 60.0)
    rng = np.random.default_rng(0)
    depth = (2.0 * (1 + 0.01 * rng.standard_normal((30, 40)))).astype(np.float32)
    normals = np.zeros((30, 40, 3), np.float32)
    normals[..., 2] = 1.0
    write_exr(tmp_path / "d.exr", depth)
    write_exr(tmp_path / "n.exr", normals)
    (tmp_path / "camera.json").write_text(json.dumps(camera.to_dict()))
    return tmp_path, depth


def test_fuse_writes_smoother_depth_and_mesh(plane_maps):
    folder, depth = plane_maps
    code = cli.main(["fuse", "--depth", str(folder / "d.exr"), "--normal", str(folder / "n.exr"),
                     "--camera", str(folder / "camera.json"), "-o", str(folder / "fused.exr"),
                     "--mesh", str(folder / "mesh.ply")])
    assert code == 0
    fused = read_exr(folder / "fused.exr")
    assert fused.shape == depth.shape
    assert np.abs(fused - 2.0).std() < 0.2 * np.abs(depth - 2.0).std()
    assert (folder / "mesh.ply").read_bytes().startswith(b"ply\nformat binary_little_endian")


def test_errors_are_one_line_exit_2_and_write_nothing(plane_maps, capsys):
    folder, _ = plane_maps
    before = sorted(p.name for p in folder.iterdir())
    code = cli.main(["fuse", "--depth", str(folder / "missing.exr"), "--normal", str(folder / "n.exr"),
                     "--camera", str(folder / "camera.json"), "-o", str(folder / "fused.exr")])
    assert code == cli.EXIT_FAILURE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("invrender fuse: error:") and "missing.exr" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == before

    (folder / "bad.json").write_text("{not json")
    code = cli.main(["fuse", "--depth", str(folder / "d.exr"), "--normal", str(folder / "n.exr"),
                     "--camera", str(folder / "bad.json"), "-o", str(folder / "fused.exr")])
    assert code == cli.EXIT_FAILURE
    assert "bad.json is not valid JSON" in capsys.readouterr().err
    assert not (folder / "fused.exr").exists()


def test_scene_without_maps_says_what_to_do(tmp_path, capsys):
    code = cli.main(["scene", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out.blend")])
    assert code == cli.EXIT_FAILURE
    assert "--depth" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

