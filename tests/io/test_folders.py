"""Whole-or-nothing writes (`io.folders`): the file appears only complete, with an ordinary file's permissions."""

import os
import stat

import pytest

from invrender_core.io.folders import temporary_beside, write_atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_file_has_ordinary_permissions(tmp_path, umask_022):
    # tempfile.mkstemp makes 0o600 files: weights and render passes written through it were unreadable to others.
    target = tmp_path / "weights.safetensors"
    write_atomic(target, lambda tmp: tmp.write_bytes(b"data"))
    assert target.read_bytes() == b"data"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_umask_is_respected(tmp_path):
    previous = os.umask(0o077)
    try:
        tmp = temporary_beside(tmp_path / "a.exr")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
    assert tmp.parent == tmp_path and tmp.suffix == ".exr" and tmp.name.startswith(".a.")


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "new" / "deeper" / "file.json"
    (tmp_path / "kept.txt").write_text("user's")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "registry.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        write_atomic(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("interrupted")))
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]
