"""Folders a write creates, and removing them again when the write fails (no empty folders left behind)."""

from __future__ import annotations

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
