"""Weights registry: MegaDepth import (API and CLI), strict safetensors loading, sha256, refusals."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from invrender_core import cli
from invrender_core.nets import weights
from invrender_core.nets.depth import MegaDepthHourglass
from invrender_core.nets.irn import InverseRenderNet


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
    assert "Li & Snavely" in entry.licence and entry.card
    assert entry.architecture == "megadepth" and entry.config == {"width": 1.0}

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


def test_a_failed_import_leaves_no_file_and_no_folder(tmp_path, released_state, monkeypatch):
    import safetensors.torch

    pth = tmp_path / "best_generalization_net_G.pth"
    torch.save(released_state, pth)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        weights.import_megadepth_checkpoint(pth, tmp_path / "new" / "models")
    assert sorted(p.name for p in tmp_path.iterdir()) == [pth.name]


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


# --------------------------------------------------------------------------- architectures, shipped weights


def _save(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _random_irn(seed: int, width: float = 0.0625) -> InverseRenderNet:
    torch.manual_seed(seed)
    return InverseRenderNet(width=width)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "shipped"
    monkeypatch.setattr(weights, "SHIPPED_WEIGHTS_DIR", folder)
    return folder


def test_build_model_from_the_table():
    irn = weights.build_model("irn", {"width": 0.0625})
    assert isinstance(irn, InverseRenderNet) and irn.widths == (4, 8, 16, 32, 32) and irn.has_prior
    assert not weights.build_model("irn", {"width": 0.0625, "prior": False}).has_prior
    gained = weights.build_model("irn", {"width": 0.0625, "albedo_gain": [0.5, 1, 0.75]})
    assert gained.albedo_gain.flatten().tolist() == [0.5, 1.0, 0.75]
    assert gained.albedo_weight == 1.0  # by default the network's albedo is taken as it is
    assert weights.build_model("irn", {"width": 0.0625, "albedo_weight": 0.7}).albedo_weight == 0.7
    for bad in (0, 1.5, True, "0.7"):
        with pytest.raises(ValueError, match="albedo_weight"):
            weights.build_model("irn", {"width": 0.0625, "albedo_weight": bad})
    for bad in ([0.5, 1], "0.5,1,1", [0.5, -1, 1]):
        with pytest.raises(ValueError, match="albedo_gain"):
            weights.build_model("irn", {"width": 0.0625, "albedo_gain": bad})
    depth = weights.build_model("megadepth", {"width": 0.0625})
    assert isinstance(depth, MegaDepthHourglass) and depth[0].out_channels == 8  # 128 * 0.0625
    legacy = weights.WeightsEntry("megadepth", "m.safetensors", "0" * 64, "L", "card",
                                  "invrender_core.nets.depth.MegaDepthHourglass(width=1.0)")
    assert weights.architecture_of(legacy) == ("megadepth", {"width": 1.0})
    with pytest.raises(ValueError, match=r"unknown keys \['depth'\]"):
        weights.build_model("irn", {"width": 0.5, "depth": 3})
    with pytest.raises(ValueError, match="unknown architecture .os.system"):
        weights.build_model("os.system('rm -rf /')")
    with pytest.raises(ValueError, match="positive number"):
        weights.build_model("megadepth", {"width": "1"})
    with pytest.raises(ValueError, match="unknown architecture"):
        weights.architecture_of(weights.WeightsEntry("x", "x.safetensors", "0" * 64, "L", "c", "__import__('os')"))


def test_infer_architecture_from_shapes():
    assert weights.infer_architecture(_random_irn(0).state_dict()) == ("irn", {"width": 0.0625})
    assert weights.infer_architecture(MegaDepthHourglass(width=0.25).state_dict()) == ("megadepth", {"width": 0.25})
    with pytest.raises(ValueError, match="no known architecture"):
        weights.infer_architecture({"fc.weight": torch.zeros(3, 3)})


def test_register_shipped_writes_weights_card_and_registry(tmp_path, shipped):
    source = _save(_random_irn(1), tmp_path / "model.safetensors")
    card = "# Training\n\nInverseRenderNet at width 1/16, trained on the synthetic multiview set.\n\nMore."
    entry = weights.register_shipped(source, "irn-tiny", "irn", {"width": 0.0625}, licence="GPL-3.0-or-later",
                                     card_markdown=card)
    assert _files(shipped) == ["irn-tiny.md", "irn-tiny.safetensors", "registry.json"]
    assert entry.sha256 == weights.sha256_of(shipped / "irn-tiny.safetensors") == weights.sha256_of(source)
    assert entry.card == "InverseRenderNet at width 1/16, trained on the synthetic multiview set."
    md = (shipped / "irn-tiny.md").read_text()
    assert entry.sha256 in md and '{"width": 0.0625}' in md and md.rstrip().endswith("More.")
    assert weights.read_registry(shipped / "registry.json")["irn-tiny"] == entry
    _assert_same_weights(weights.load_named("irn-tiny", tmp_path / "no-user-weights"), _random_irn(1))

    # A config that does not fit the file fails before anything is written.
    with pytest.raises(ValueError, match="does not fit InverseRenderNet"):
        weights.register_shipped(source, "irn-wrong", "irn", {"width": 0.125}, licence="L", card_markdown="c")
    with pytest.raises(ValueError, match="lower-case"):
        weights.register_shipped(source, "../evil", "irn", {"width": 0.0625}, licence="L", card_markdown="c")
    assert _files(shipped) == ["irn-tiny.md", "irn-tiny.safetensors", "registry.json"]


def test_register_shipped_command_line(tmp_path, shipped, capsys):
    source = _save(MegaDepthHourglass(width=0.0625), tmp_path / "model.safetensors")
    (tmp_path / "card.md").write_text("Depth at width 1/16.")
    assert weights.main(["depth-tiny", str(source), "--architecture", "megadepth", "--width", "0.0625",
                         "--licence", "GPL", "--card", str(tmp_path / "card.md")]) == 0
    assert "registered depth-tiny" in capsys.readouterr().out
    model = weights.load_named("depth-tiny", tmp_path, expect="megadepth")
    assert isinstance(model, MegaDepthHourglass) and not model.training


def test_user_weights_come_before_shipped_ones(tmp_path, shipped):
    weights.register_shipped(_save(_random_irn(1), tmp_path / "a.safetensors"), "irn-tiny", "irn",
                             {"width": 0.0625}, licence="L", card_markdown="shipped")
    user = tmp_path / "user"
    weights.register_shipped(_save(_random_irn(2), tmp_path / "b.safetensors"), "irn-tiny", "irn",
                             {"width": 0.0625}, licence="L", card_markdown="user's own", folder=user)
    _assert_same_weights(weights.load_named("irn-tiny", user), _random_irn(2))
    entry, folder = weights.find_entry("irn-tiny", user)
    assert folder == user and entry.card == "user's own"
    _assert_same_weights(weights.load_model("irn-tiny", InverseRenderNet(width=0.0625), user), _random_irn(2))
    (user / "registry.json").unlink()  # the user's registry no longer has it: the shipped one is used
    _assert_same_weights(weights.load_named("irn-tiny", user), _random_irn(1))
    with pytest.raises(ValueError, match=r"no weights named 'depth-small' in .*user or in the shipped weights") as info:
        weights.load_named("depth-small", user)
    assert "\n" not in str(info.value) and "irn-tiny" in str(info.value)


def test_shipped_sha256_mismatch_is_refused(tmp_path, shipped):
    weights.register_shipped(_save(_random_irn(1), tmp_path / "a.safetensors"), "irn-tiny", "irn",
                             {"width": 0.0625}, licence="L", card_markdown="c")
    # Same size and still valid safetensors, other values: only the checksum can tell.
    _save(_random_irn(3), shipped / "irn-tiny.safetensors")
    with pytest.raises(ValueError, match="sha256") as info:
        weights.load_named("irn-tiny", tmp_path / "user")
    assert "\n" not in str(info.value)


def test_load_by_path_infers_or_reads_the_architecture(tmp_path, shipped):
    path = _save(_random_irn(4), tmp_path / "trained.safetensors")
    model, entry, where = weights.load_named(path, return_entry=True)
    assert where == path and entry.architecture == "irn" and entry.config == {"width": 0.0625}
    _assert_same_weights(model, _random_irn(4))
    _assert_same_weights(weights.load_model(str(path)), _random_irn(4))  # a string path works too
    with pytest.raises(ValueError, match="holds 'irn' weights, but 'megadepth' weights are needed"):
        weights.load_named(path, expect="megadepth")
    # A file in a folder with a registry is described by it (and its sha256 checked).
    entry = weights.register_shipped(path, "irn-x", "irn", {"width": 0.0625}, licence="L", card_markdown="c")
    assert weights.describe(shipped / "irn-x.safetensors")[0] == entry


def test_registry_without_config_fields_still_reads(tmp_path):
    """Registries written before architectures had a table: no config / card_file fields."""
    (tmp_path / "registry.json").write_text(json.dumps({"version": 1, "models": {"megadepth": {
        "name": "megadepth", "file": "megadepth.safetensors", "sha256": "0" * 64, "licence": "L", "card": "c",
        "architecture": "invrender_core.nets.depth.MegaDepthHourglass(width=1.0)"}}}))
    entry = weights.read_registry(tmp_path / "registry.json")["megadepth"]
    assert entry.config == {} and entry.card_file == ""
    assert weights.architecture_of(entry) == ("megadepth", {"width": 1.0})
