"""Writing files whole or not at all: temporary files beside their target, and the folders a write creates,
removed again when the write fails (no empty folders left behind)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and its parents that do not exist yet, deepest first: what writing into `folder` would create."""
    folder = Path(folder)
    return [p for p in [folder, *folder.parents] if not p.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove those of `folders` (deepest first) that are empty, after a failed write made them; keep the rest."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def temporary_beside(path: Path) -> Path:
    """A new empty file with a unique hidden name in `path`'s folder (so that renaming it onto `path` is atomic)
    and `path`'s suffix (writers pick formats by it). Its permissions are an ordinary new file's (0o666 less the
    umask): `tempfile.mkstemp` makes owner-only files, which others sharing a studio's folders could not read."""
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` for a temporary file beside `path`, then rename it onto `path`: nobody sees a part-written
    file, and on failure nothing is left at `path` or beside it, nor the folders made for it."""
    path = Path(path)
    created = missing_folders(path.parent)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_beside(path)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        remove_empty_folders(created)
        raise
