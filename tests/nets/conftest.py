"""The released MegaDepth checkpoint's layout, read from ../shared (tests skip when it is absent)."""

from pathlib import Path

import pytest

KEYS_FILE = (Path(__file__).resolve().parents[3] / "shared" / "data" / "checkpoint_layouts"
             / "megadepth_best_generalization_net_G.keys.txt")


@pytest.fixture(scope="session")
def released_layout() -> dict[str, list[int]]:
    """Names (with `module.`) -> shapes of the released best_generalization_net_G.pth, in file order."""
    if not KEYS_FILE.is_file():
        pytest.skip(f"{KEYS_FILE} not available (../shared absent)")
    layout = {}
    for line in KEYS_FILE.read_text().splitlines():
        name, shape = line.split("\t")
        layout[name] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    return layout
