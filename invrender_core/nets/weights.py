"""Network weights as described data: a registry of name -> file + sha256 + licence + card, safetensors only.

Two folders hold weights, each with a `registry.json`: the user's weights folder (`user_weights_dir()`; the
Blender add-on passes its own) and the weights shipped inside the package (`shipped_weights_dir()`,
`invrender_core/data/weights/`, each model with a markdown model card). A name is looked up in the user's folder
first, then in the shipped one, so a user can override a shipped model. Third-party checkpoints come in through
an importer (`import_megadepth_checkpoint`) that reads them with `torch.load(weights_only=True)` (no arbitrary
unpickling), checks the layout against the architecture exactly, and writes a safetensors file registered with
its sha256; trained models are added to the shipped folder with `register_shipped`.

An entry names its architecture from a fixed table (`ARCHITECTURES`: "irn", "megadepth", "relight_refine",
"shadow_refine", "photo_shadow", "face_corr") plus a
`config` dict of constructor arguments, so `build_model` never evaluates text. Loading is strict and returns the model
in `eval()` mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..io.folders import write_atomic

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
# Shipped weights live in the package; tests point this elsewhere.
SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "data" / "weights"
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # registry names double as file names


@dataclass(frozen=True)
class WeightsEntry:
    """One registered weights file.

    Attributes:
        name: registry key, e.g. "megadepth".
        file: file name inside the weights folder (safetensors).
        sha256: hex digest of the file.
        licence: the terms the weights come under (a note; the user holds the file).
        card: what the weights are, in one paragraph: source, input/output shapes, training data.
        architecture: a key of `ARCHITECTURES` ("irn", "megadepth"); registries written before the table
            existed hold a constructor call, read through `LEGACY_ARCHITECTURES`.
        config: keyword arguments of the architecture's constructor, e.g. {"width": 0.125}.
        card_file: the markdown model card beside the weights file ("" when there is none).
    """

    name: str
    file: str
    sha256: str
    licence: str
    card: str
    architecture: str
    config: dict = field(default_factory=dict)
    card_file: str = ""


# ---------------------------------------------------------------------------------------- architectures


def _number(value, key: str, arch: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{arch} config {key!r} must be a positive number, got {value!r}")
    return float(value)


def _build_irn(width: float = 1.0, groups: int = 8, prior: bool = True, albedo_gain=None,
               albedo_weight=1.0) -> nn.Module:
    from ..illumination_prior import IlluminationPrior
    from .irn import InverseRenderNet

    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"irn config 'groups' must be a positive integer, got {groups!r}")
    if not isinstance(prior, bool):
        raise ValueError(f"irn config 'prior' must be true or false, got {prior!r}")
    if albedo_gain is not None:
        if not isinstance(albedo_gain, list) or len(albedo_gain) != 3:
            raise ValueError(f"irn config 'albedo_gain' must be a list of 3 positive numbers, got {albedo_gain!r}")
        albedo_gain = [_number(g, "albedo_gain", "irn") for g in albedo_gain]
    # The prior's buffers are not in the state dict: the training task (train/irn_task.py) always uses the
    # packaged prior, hence the default.
    return InverseRenderNet(width=_number(width, "width", "irn"), groups=groups,
                            prior=IlluminationPrior.load() if prior else None, albedo_gain=albedo_gain,
                            albedo_weight=_number(albedo_weight, "albedo_weight", "irn"))


def _build_megadepth(width: float = 1.0) -> nn.Module:
    from .depth import MegaDepthHourglass

    return MegaDepthHourglass(width=_number(width, "width", "megadepth"))


def _build_relight_refine(width: int = 24, max_side: int = 256) -> nn.Module:
    from .relight_refine import RelightRefiner

    return RelightRefiner(width=int(_number(width, "width", "relight_refine")),
                          max_side=int(_number(max_side, "max_side", "relight_refine")))


def _build_shadow_refine(width: int = 16, levels: int = 3, max_side: int = 256) -> nn.Module:
    from .shadow_refine import ShadowRefiner

    return ShadowRefiner(width=int(_number(width, "width", "shadow_refine")),
                         levels=int(_number(levels, "levels", "shadow_refine")),
                         max_side=int(_number(max_side, "max_side", "shadow_refine")))


def _build_photo_shadow(width: int = 16, levels: int = 3) -> nn.Module:
    from .photo_shadow import PhotoShadowNet

    return PhotoShadowNet(width=int(_number(width, "width", "photo_shadow")),
                          levels=int(_number(levels, "levels", "photo_shadow")))


def _build_face_corr(width: int = 16, size: int = 128) -> nn.Module:
    from .face_corr import FaceCorrespondenceNet

    return FaceCorrespondenceNet(width=int(_number(width, "width", "face_corr")),
                                 size=int(_number(size, "size", "face_corr")))


# The only constructors a registry entry can name: architecture key -> function of the config's keywords.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"irn": _build_irn, "megadepth": _build_megadepth,
                                                      "relight_refine": _build_relight_refine,
                                                      "shadow_refine": _build_shadow_refine,
                                                      "photo_shadow": _build_photo_shadow,
                                                      "face_corr": _build_face_corr}
# Exact strings older registries stored as `architecture` -> (key, config). Matched literally, never parsed.
LEGACY_ARCHITECTURES = {
    "invrender_core.nets.depth.MegaDepthHourglass(width=1.0)": ("megadepth", {"width": 1.0}),
}
_CONFIG_KEYS = {"irn": {"width", "groups", "prior", "albedo_gain", "albedo_weight"}, "megadepth": {"width"},
                "relight_refine": {"width", "max_side"}, "shadow_refine": {"width", "levels", "max_side"},
                "photo_shadow": {"width", "levels"},
                "face_corr": {"width", "size"}}


def architecture_of(entry: WeightsEntry) -> tuple[str, dict]:
    """(architecture key, config) of an entry, legacy constructor strings included."""
    if entry.architecture in ARCHITECTURES:
        return entry.architecture, dict(entry.config)
    if entry.architecture in LEGACY_ARCHITECTURES:
        arch, config = LEGACY_ARCHITECTURES[entry.architecture]
        return arch, {**config, **entry.config}
    raise ValueError(f"weights {entry.name!r} name an unknown architecture {entry.architecture!r} "
                     f"(known: {', '.join(ARCHITECTURES)}): update invrender or fix the registry")


def build_model(entry: WeightsEntry | str, config: Mapping | None = None) -> nn.Module:
    """The untrained network an entry describes (or architecture key + config), from the `ARCHITECTURES` table.

    `build_model(entry)` or `build_model("irn", {"width": 0.125})`. Config keys: irn: width, groups (8),
    prior (true: the packaged illumination prior); megadepth: width. Unknown keys raise ValueError.
    """
    if isinstance(entry, WeightsEntry):
        arch, cfg = architecture_of(entry)
        cfg.update(config or {})
    else:
        arch, cfg = str(entry), dict(config or {})
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    unknown = sorted(set(cfg) - _CONFIG_KEYS[arch])
    if unknown:
        raise ValueError(f"{arch} config has unknown keys {unknown} (allowed: {sorted(_CONFIG_KEYS[arch])})")
    return ARCHITECTURES[arch](**cfg)


def infer_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str, dict]:
    """(architecture key, config) of a state dict, from the shape of its first convolution.

    InverseRenderNet's first convolution `encoder.0.0.0.weight` has 64·width output channels, MegaDepth's
    stem `0.weight` (7x7) 128·width. Used for weights given by path without a registry; the strict load that
    follows checks every other tensor.
    """
    irn = state.get("encoder.0.0.0.weight")
    if irn is not None and irn.ndim == 4 and tuple(irn.shape[1:]) == (3, 3, 3):
        return "irn", {"width": irn.shape[0] / 64}
    stem = state.get("0.weight")
    if stem is not None and stem.ndim == 4 and tuple(stem.shape[1:]) == (3, 7, 7):
        return "megadepth", {"width": stem.shape[0] / 128}
    refine = state.get("enc1.0.weight")
    if refine is not None and refine.ndim == 4 and tuple(refine.shape[1:]) == (20, 3, 3):
        return "relight_refine", {"width": refine.shape[0]}
    unet = state.get("encoders.0.0.weight")  # shadow_refine.SmallUNet: the shadow refiner, the photo-shadow net
    unet_inputs = {11: "shadow_refine", 10: "photo_shadow"}
    if unet is not None and unet.ndim == 4 and tuple(unet.shape[2:]) == (3, 3) and unet.shape[1] in unet_inputs:
        levels = sum(1 for k in state if k.startswith("encoders.") and k.endswith(".0.weight"))
        return unet_inputs[unet.shape[1]], {"width": unet.shape[0], "levels": levels}
    face = state.get("down.0.0.weight")
    if face is not None and face.ndim == 4 and tuple(face.shape[1:]) == (3, 3, 3):
        return "face_corr", {"width": face.shape[0]}
    raise ValueError("the weights match no known architecture (InverseRenderNet, the MegaDepth hourglass, the "
                     "relighting or shadow refiner, the photo-shadow network or the face correspondence network): "
                     "give weights saved from one of these networks")


def user_weights_dir() -> Path:
    """The weights folder: $INVRENDER_WEIGHTS_DIR, else ~/.local/share/invrender/models (may not exist yet)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "invrender" / "models"


def shipped_weights_dir() -> Path:
    """The weights shipped inside the package: invrender_core/data/weights (may hold no registry yet)."""
    return Path(SHIPPED_WEIGHTS_DIR)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_registry(registry_file: Path) -> dict[str, WeightsEntry]:
    """Registered entries by name; an absent registry is empty."""
    registry_file = Path(registry_file)
    if not registry_file.exists():
        return {}
    try:
        data = json.loads(registry_file.read_text())
        entries = {name: WeightsEntry(**fields) for name, fields in data["models"].items()}
        if not all(isinstance(e.config, dict) for e in entries.values()):
            raise TypeError("a config is not a JSON object")
        return entries
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{registry_file} is not a valid weights registry ({e}); delete it and import again") from e


def register(entry: WeightsEntry, registry_file: Path) -> None:
    """Add or replace `entry` in the JSON registry at `registry_file` (written atomically)."""
    registry_file = Path(registry_file)
    entries = read_registry(registry_file)
    entries[entry.name] = entry
    text = json.dumps({"version": REGISTRY_VERSION, "models": {n: asdict(e) for n, e in sorted(entries.items())}},
                      indent=2)
    write_atomic(registry_file, lambda tmp: tmp.write_text(text + "\n"))


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
        raise FileNotFoundError(f"weights file not found: {path}: check the path, or copy, import or train the "
                                f"weights again (`invrender weights list` shows what is registered where)")
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256.lower():
            raise ValueError(f"{path} has sha256 {actual}, expected {expected_sha256}: the file is corrupt or "
                             f"not the registered one; import it again")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}): it is damaged or "
                         f"not weights; copy, import or train it again") from e


def find_entry(name: str, weights_dir: Path | None = None) -> tuple[WeightsEntry, Path]:
    """(entry, folder holding its file) for a registered name: the user's folder first, then the shipped one.

    `weights_dir` replaces the user's folder (default `user_weights_dir()`). Raises ValueError naming both
    folders when neither registers the name.
    """
    user = Path(weights_dir) if weights_dir is not None else user_weights_dir()
    shipped = shipped_weights_dir()
    known = set()
    for folder in (user, shipped):
        entries = read_registry(folder / REGISTRY_FILE)
        if name in entries:
            return entries[name], folder
        known |= set(entries)
    raise ValueError(f"no weights named {name!r} in {user} or in the shipped weights {shipped} "
                     f"(registered: {', '.join(sorted(known)) or 'none'}): install them there or give a "
                     f".safetensors file")


def _is_path(name_or_path: str | Path) -> bool:
    """A Path, a .safetensors name, anything with a folder separator or an existing file; else a registry name."""
    text = str(name_or_path)
    return (isinstance(name_or_path, Path) or text.endswith(".safetensors") or "/" in text or os.sep in text
            or Path(text).is_file())


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # torch's message spans lines; keep the first
        raise ValueError(f"{path} does not fit {type(model).__name__}: {str(e).splitlines()[0]}") from e
    return model.eval()


def load_model(name_or_path: str | Path, model: nn.Module | None = None, weights_dir: Path | None = None) -> nn.Module:
    """Load registered weights (by name) or a safetensors file (by path) strictly; return the model in eval().

    A name is looked up by `find_entry` (`weights_dir` or the user's folder, then the shipped weights) and its
    sha256 verified. With `model` None the network is built from the entry (`build_model`) or, for a path,
    as `load_named` does.
    """
    if model is None:
        return load_named(name_or_path, weights_dir)
    if _is_path(name_or_path):
        path, expected = Path(name_or_path), None
    else:
        entry, folder = find_entry(str(name_or_path), weights_dir)
        path, expected = folder / entry.file, entry.sha256
    return _load_strict(model, load_state_dict(path, expected_sha256=expected), path)


def describe(name_or_path: str | Path, weights_dir: Path | None = None) -> tuple[WeightsEntry, Path]:
    """(entry, weights file) for a registered name or a .safetensors path, without loading the tensors' values.

    A path is described by the registry beside it when that lists the file (sha256 then verified on load),
    otherwise by `infer_architecture` on its tensors (name = the file's stem, sha256 computed).
    """
    if not _is_path(name_or_path):
        entry, folder = find_entry(str(name_or_path), weights_dir)
        return entry, folder / entry.file
    path = Path(name_or_path)
    for entry in read_registry(path.parent / REGISTRY_FILE).values() if path.is_file() else ():
        if entry.file == path.name:
            return entry, path
    arch, config = infer_architecture(load_state_dict(path))
    return WeightsEntry(name=path.stem, file=path.name, sha256=sha256_of(path), licence="unknown (given by path)",
                        card="", architecture=arch, config=config), path


def load_named(name_or_path: str | Path, weights_dir: Path | None = None, *, expect: str | None = None,
               device: str | torch.device = "cpu", return_entry: bool = False):
    """Build the network for a registered name or a .safetensors path, load it strictly, return it in eval().

    The architecture comes from the registry entry (`describe`); `expect` ("irn" or "megadepth") refuses
    weights of another architecture with a one-line ValueError. The model is moved to `device`. With
    return_entry=True returns (model, entry, weights file).
    """
    entry, path = describe(name_or_path, weights_dir)
    arch, _ = architecture_of(entry)
    if expect is not None and arch != expect:
        raise ValueError(f"{str(name_or_path)!r} holds {arch!r} weights, but {expect!r} weights are needed here")
    state = load_state_dict(path, expected_sha256=entry.sha256)
    try:
        model = build_model(entry)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    model = _load_strict(model, state, path).to(device)
    return (model, entry, path) if return_entry else model


def register_shipped(weights_file: Path, name: str, architecture: str, config: Mapping, *, licence: str,
                     card_markdown: str, summary: str | None = None, folder: Path | None = None) -> WeightsEntry:
    """Add a trained model to the shipped weights (default `shipped_weights_dir()`), replacing one of that name.

    Checks that `weights_file` (safetensors) loads strictly into `build_model(architecture, config)`, then
    copies it to `<name>.safetensors`, writes the model card `<name>.md` (a generated header with
    architecture, config, sha256 and licence, then `card_markdown`) and registers it with its sha256; the
    registry's one-paragraph `card` is `summary` or the card's first paragraph. On any error nothing is written.
    """
    folder = Path(folder) if folder is not None else shipped_weights_dir()
    if not _SAFE_NAME.match(name):
        raise ValueError(f"model name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
    read_registry(folder / REGISTRY_FILE)  # a broken registry fails now, before anything is written
    weights_file = Path(weights_file)
    _load_strict(build_model(architecture, config), load_state_dict(weights_file), weights_file)
    data = weights_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if summary is None:
        paragraphs = [p.strip() for p in card_markdown.split("\n\n") if p.strip() and not p.lstrip().startswith("#")]
        summary = " ".join(paragraphs[0].split()) if paragraphs else name
    header = (f"# {name}\n\n| | |\n|---|---|\n| architecture | `{architecture}` |\n"
              f"| config | `{json.dumps(dict(config), sort_keys=True)}` |\n| file | `{name}.safetensors` |\n"
              f"| sha256 | `{digest}` |\n| licence | {licence} |\n\n")
    entry = WeightsEntry(name=name, file=f"{name}.safetensors", sha256=digest, licence=licence, card=summary,
                         architecture=architecture, config=dict(config), card_file=f"{name}.md")
    write_atomic(folder / entry.file, lambda tmp: tmp.write_bytes(data))
    write_atomic(folder / entry.card_file, lambda tmp: tmp.write_text(header + card_markdown.strip() + "\n"))
    register(entry, folder / REGISTRY_FILE)
    return entry


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
    if pth_path.is_dir():
        raise ValueError(f"{pth_path} is a folder: give the checkpoint file (.pth)")
    if not pth_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {pth_path}")
    read_registry(weights_dir / REGISTRY_FILE)  # a broken registry fails now, before anything is written
    state = strip_dataparallel(_read_checkpoint(pth_path))
    # Re-saved copies may carry BatchNorm counters the architecture does not keep (they are never read).
    state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    check_layout(state, MegaDepthHourglass().state_dict(), str(pth_path))

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().to(torch.float32) for k, v in state.items()}
    out = weights_dir / MEGADEPTH_FILE

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata={"source": pth_path.name})
        except SafetensorError as e:  # e.g. a full disk, which safetensors does not raise as an OSError
            raise OSError(f"could not write {out} ({e}): make room or give another --weights-dir") from e

    write_atomic(out, write)
    register(WeightsEntry(name=MEGADEPTH_NAME, file=MEGADEPTH_FILE, sha256=sha256_of(out),
                          licence=MEGADEPTH_LICENCE, card=MEGADEPTH_CARD, architecture="megadepth",
                          config={"width": 1.0}),
             weights_dir / REGISTRY_FILE)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m invrender_core.nets.weights NAME FILE --architecture irn --width 0.125 --licence L --card C.md`:
    `register_shipped` from the command line (for whoever trains the shipped models)."""
    import argparse

    parser = argparse.ArgumentParser(description="Add trained weights to the package's shipped weights.")
    parser.add_argument("name", help="registry name, e.g. irn-small")
    parser.add_argument("weights_file", type=Path, help="the trained model.safetensors")
    parser.add_argument("--architecture", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--width", type=float, required=True, help="the network's channel multiplier")
    parser.add_argument("--licence", required=True)
    parser.add_argument("--card", type=Path, required=True, help="model card body (markdown)")
    parser.add_argument("--folder", type=Path, help=f"default {shipped_weights_dir()}")
    args = parser.parse_args(argv)
    entry = register_shipped(args.weights_file, args.name, args.architecture, {"width": args.width},
                             licence=args.licence, card_markdown=args.card.read_text(), folder=args.folder)
    print(f"registered {entry.name}: {entry.file} sha256 {entry.sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
