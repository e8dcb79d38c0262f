"""Network weights as described data: a registry of name -> file + sha256 + licence + card, safetensors only.

Weights live in the user's weights folder (`user_weights_dir()`; the Blender add-on passes its own), never
in the package. Third-party checkpoints come in through an importer (`import_megadepth_checkpoint`) that
reads them with `torch.load(weights_only=True)` (no arbitrary unpickling), checks the layout against the
architecture exactly, and writes a safetensors file registered with its sha256. Loading is strict and
returns the model in `eval()` mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

REGISTRY_FILE = "registry.json"
REGISTRY_VERSION = 1
WEIGHTS_DIR_ENV = "INVRENDER_WEIGHTS_DIR"
MEGADEPTH_NAME = "megadepth"
MEGADEPTH_FILE = "megadepth.safetensors"
MEGADEPTH_LICENCE = "MegaDepth, Li & Snavely: see the authors' terms"
MEGADEPTH_CARD = (
    "MegaDepth hourglass (Li & Snavely, CVPR 2018; architecture of Chen et al., NIPS 2016), released "
    "checkpoint best_generalization_net_G.pth. Input (B, 3, H, W) RGB in [0, 1], H and W multiples of 16; "
    "output (B, 1, H, W) log depth, relative scale. Trained on MegaDepth (internet photos + MVS)."
)
_MAX_LISTED = 5  # mismatches named in a layout error


@dataclass(frozen=True)
class WeightsEntry:
    """One registered weights file.

    Attributes:
        name: registry key, e.g. "megadepth".
        file: file name inside the weights folder (safetensors).
        sha256: hex digest of the file.
        licence: the terms the weights come under (a note; the user holds the file).
        card: what the weights are: source, input/output shapes, training data.
        architecture: the class that loads them, e.g. "invrender_core.nets.depth.MegaDepthHourglass(width=1.0)".
    """

    name: str
    file: str
    sha256: str
    licence: str
    card: str
    architecture: str


def user_weights_dir() -> Path:
    """The weights folder: $INVRENDER_WEIGHTS_DIR, else ~/.local/share/invrender/models (may not exist yet)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "invrender" / "models"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, write) -> None:
    """Call `write(tmp_path)`, then rename onto `path`; nothing is left at `path` or beside it on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_registry(registry_file: Path) -> dict[str, WeightsEntry]:
    """Registered entries by name; an absent registry is empty."""
    registry_file = Path(registry_file)
    if not registry_file.exists():
        return {}
    try:
        data = json.loads(registry_file.read_text())
        return {name: WeightsEntry(**fields) for name, fields in data["models"].items()}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{registry_file} is not a valid weights registry ({e}); delete it and import again") from e


def register(entry: WeightsEntry, registry_file: Path) -> None:
    """Add or replace `entry` in the JSON registry at `registry_file` (written atomically)."""
    registry_file = Path(registry_file)
    entries = read_registry(registry_file)
    entries[entry.name] = entry
    text = json.dumps({"version": REGISTRY_VERSION, "models": {n: asdict(e) for n, e in sorted(entries.items())}},
                      indent=2)
    _write_atomic(registry_file, lambda tmp: tmp.write_text(text + "\n"))


def load_state_dict(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a CPU state dict, checking its sha256 when one is given.

    Anything but safetensors is refused: other formats (.pth, .ckpt) may unpickle arbitrary code.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path} is not a .safetensors file: only safetensors weights are loaded; convert a "
                         f"released checkpoint with `invrender weights import`")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256.lower():
            raise ValueError(f"{path} has sha256 {actual}, expected {expected_sha256}: the file is corrupt or "
                             f"not the registered one; import it again")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from e


def load_model(name_or_path: str | Path, model: nn.Module, weights_dir: Path | None = None) -> nn.Module:
    """Load registered weights (by name) or a safetensors file (by path) into `model`, strictly; return it in eval().

    A name is looked up in `weights_dir`'s registry (default `user_weights_dir()`) and its sha256 verified.
    """
    path = Path(name_or_path)
    expected = None
    if path.suffix != ".safetensors":  # a registry name
        weights_dir = Path(weights_dir) if weights_dir is not None else user_weights_dir()
        entries = read_registry(weights_dir / REGISTRY_FILE)
        if str(name_or_path) not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise ValueError(f"no weights named {name_or_path!r} in {weights_dir} (registered: {known}); "
                             f"import them with `invrender weights import`")
        entry = entries[str(name_or_path)]
        path, expected = weights_dir / entry.file, entry.sha256
    state = load_state_dict(path, expected_sha256=expected)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # torch's message spans lines; keep the first
        raise ValueError(f"{path} does not fit {type(model).__name__}: {str(e).splitlines()[0]}") from e
    return model.eval()


def _read_checkpoint(pth_path: Path) -> dict[str, torch.Tensor]:
    """A .pth state dict (bare or under "state_dict"), read without unpickling arbitrary objects."""
    try:
        checkpoint = torch.load(pth_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # torch names the refused class as "GLOBAL module.name"
            raise ValueError(f"{pth_path} needs arbitrary objects unpickled, which is refused for safety; "
                             f"give a checkpoint holding only a state dict of tensors") from e
        raise ValueError(f"{pth_path} is not a readable PyTorch checkpoint (unpickling failed)") from e
    except (RuntimeError, EOFError, KeyError, ValueError, TypeError) as e:  # truncated or not a checkpoint at all
        raise ValueError(f"{pth_path} is not a readable PyTorch checkpoint ({type(e).__name__})") from e
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{pth_path} holds no state dict of tensors (neither bare nor under 'state_dict')")
    return dict(checkpoint)


def check_layout(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ValueError unless `state` has exactly the names and shapes of `expected`, naming the first mismatches."""
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} has shape {list(state[k].shape)}, expected {list(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        more = f" (+{len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise ValueError(f"{source} does not match the expected layout: {'; '.join(problems[:_MAX_LISTED])}{more}")


def import_megadepth_checkpoint(pth_path: Path, weights_dir: Path | None = None) -> Path:
    """Convert MegaDepth's released `best_generalization_net_G.pth` to `megadepth.safetensors` and register it.

    The checkpoint may be a bare (DataParallel) state dict or {"state_dict": ...}; its names and shapes must
    equal `MegaDepthHourglass()`'s exactly. Returns the written path; on any error nothing is written.
    """
    from .depth import MegaDepthHourglass, strip_dataparallel

    pth_path = Path(pth_path)
    weights_dir = Path(weights_dir) if weights_dir is not None else user_weights_dir()
    if not pth_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {pth_path}")
    read_registry(weights_dir / REGISTRY_FILE)  # a broken registry fails now, before anything is written
    state = strip_dataparallel(_read_checkpoint(pth_path))
    # Re-saved copies may carry BatchNorm counters the architecture does not keep (they are never read).
    state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    check_layout(state, MegaDepthHourglass().state_dict(), str(pth_path))

    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().to(torch.float32) for k, v in state.items()}
    out = weights_dir / MEGADEPTH_FILE
    _write_atomic(out, lambda tmp: save_file(tensors, str(tmp), metadata={"source": pth_path.name}))
    register(WeightsEntry(name=MEGADEPTH_NAME, file=MEGADEPTH_FILE, sha256=sha256_of(out),
                          licence=MEGADEPTH_LICENCE, card=MEGADEPTH_CARD,
                          architecture="invrender_core.nets.depth.MegaDepthHourglass(width=1.0)"),
             weights_dir / REGISTRY_FILE)
    return out
