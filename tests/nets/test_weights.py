"""Weights registry: MegaDepth import (API and CLI), strict safetensors loading, sha256, refusals."""

import json
import os
from pathlib import Path

import pytest
import torch

from invrender_core import cli
from invrender_core.nets import weights
from invrender_core.nets.depth import MegaDepthHourglass


@pytest.fixture(scope="session")
def released_state(released_layout) -> dict[str, torch.Tensor]:
    """A random state dict with the released names (DataParallel `module.` prefix) and shapes."""
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=gen) for k, shape in released_layout.items()}


class _RunsCode:
    """Unpickling this would create a folder: weights_only loading must refuse it before it runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def _assert_equal_to_released(model: torch.nn.Module, released: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == {k.removeprefix("module.") for k in released}
    for key, value in released.items():
        assert torch.equal(state[key.removeprefix("module.")], value), key


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "state_dict"])
def test_import_api_roundtrip(tmp_path, released_state, wrapped):
    pth = tmp_path / "net_G.pth"
    torch.save({"state_dict": released_state} if wrapped else released_state, pth)
    out = weights.import_megadepth_checkpoint(pth, tmp_path / "models")
    assert out == tmp_path / "models" / "megadepth.safetensors"
    assert _files(tmp_path / "models") == ["megadepth.safetensors", "registry.json"]  # no temp files left

    entry = weights.read_registry(tmp_path / "models" / "registry.json")["megadepth"]
    assert entry.sha256 == weights.sha256_of(out)
    assert "Li & Snavely" in entry.licence and entry.card and "MegaDepthHourglass" in entry.architecture

    model = weights.load_model("megadepth", MegaDepthHourglass(), weights_dir=tmp_path / "models")
    assert not model.training
    _assert_equal_to_released(model, released_state)
    by_path = weights.load_model(out, MegaDepthHourglass())
    _assert_equal_to_released(by_path, released_state)


def test_import_via_cli_and_list(tmp_path, released_state, capsys):
    pth = tmp_path / "best_generalization_net_G.pth"
    torch.save(released_state, pth)
    folder = tmp_path / "models"
    assert cli.main(["weights", "import", "megadepth", str(pth), "--weights-dir", str(folder)]) == 0
    state = weights.load_state_dict(folder / "megadepth.safetensors")
    MegaDepthHourglass().load_state_dict(state, strict=True)
    assert cli.main(["weights", "list", "--weights-dir", str(folder)]) == 0
    assert "megadepth" in capsys.readouterr().out


def test_default_weights_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("INVRENDER_WEIGHTS_DIR", str(tmp_path / "w"))
    assert weights.user_weights_dir() == tmp_path / "w"
    monkeypatch.delenv("INVRENDER_WEIGHTS_DIR")
    assert weights.user_weights_dir() == Path.home() / ".local" / "share" / "invrender" / "models"


def test_sha256_mismatch_is_refused(tmp_path, released_state):
    pth = tmp_path / "net_G.pth"
    torch.save(released_state, pth)
    out = weights.import_megadepth_checkpoint(pth, tmp_path)
    with pytest.raises(ValueError, match="sha256") as info:
        weights.load_state_dict(out, expected_sha256="0" * 64)
    assert "\n" not in str(info.value)
    # A registered file that was replaced is caught too.
    out.write_bytes(out.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="sha256"):
        weights.load_model("megadepth", MegaDepthHourglass(), weights_dir=tmp_path)


def test_pickled_object_is_refused_without_running_it(tmp_path, released_state, capsys):
    marker = tmp_path / "code_ran"
    pth = tmp_path / "net_G.pth"
    torch.save({"state_dict": released_state, "opt": _RunsCode(marker)}, pth)
    folder = tmp_path / "models"
    with pytest.raises(ValueError, match="arbitrary objects") as info:
        weights.import_megadepth_checkpoint(pth, folder)
    assert "\n" not in str(info.value)
    assert cli.main(["weights", "import", "megadepth", str(pth), "--weights-dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "refused" in err[-1]  # one progress line, one error line
    assert not marker.exists()
    assert _files(folder) == []


def test_wrong_layout_lists_mismatches_and_writes_nothing(tmp_path, released_state):
    bad = dict(released_state)
    bad["module.4.weight"] = bad["module.4.weight"].reshape(1, 64, 9)
    del bad["module.1.running_var"]
    pth = tmp_path / "net_G.pth"
    torch.save(bad, pth)
    with pytest.raises(ValueError) as info:
        weights.import_megadepth_checkpoint(pth, tmp_path / "models")
    message = str(info.value)
    assert "missing 1.running_var" in message and "4.weight has shape [1, 64, 9]" in message
    assert "\n" not in message
    assert _files(tmp_path / "models") == []


def test_non_safetensors_refused(tmp_path, released_state):
    pth = tmp_path / "net_G.pth"
    torch.save(released_state, pth)
    with pytest.raises(ValueError, match=r"not a \.safetensors file.*invrender weights import"):
        weights.load_state_dict(pth)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        weights.load_state_dict(fake)
    with pytest.raises(ValueError, match="no weights named"):
        weights.load_model("megadepth", MegaDepthHourglass(), weights_dir=tmp_path)


def test_garbage_checkpoint_and_registry(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("hello")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        weights.import_megadepth_checkpoint(garbage, tmp_path / "models")
    (tmp_path / "registry.json").write_text("{broken")
    with pytest.raises(ValueError, match="not a valid weights registry"):
        weights.read_registry(tmp_path / "registry.json")


def test_register_replaces_by_name(tmp_path):
    registry = tmp_path / "registry.json"
    first = weights.WeightsEntry("a", "a.safetensors", "1" * 64, "MIT", "card", "Arch()")
    weights.register(first, registry)
    weights.register(weights.WeightsEntry("b", "b.safetensors", "2" * 64, "MIT", "card", "Arch()"), registry)
    weights.register(first.__class__(**{**first.__dict__, "sha256": "3" * 64}), registry)
    entries = weights.read_registry(registry)
    assert sorted(entries) == ["a", "b"] and entries["a"].sha256 == "3" * 64
    assert json.loads(registry.read_text())["version"] == 1
