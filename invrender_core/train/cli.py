"""`invrender train depth|irn|relight|shadow|face`: the command-line front of `trainer.Trainer`.

    invrender train depth --data datagen/out/multiview --out runs/depth --steps 20000 --width 0.25
    torchrun --nproc_per_node 4 -m invrender_core.cli train irn --data DIR --out runs/irn --device cuda --amp

`add_train_parser(subparsers)` adds the sub-command to the `invrender` parser; `run_train(args)` runs it.
Tasks are built as `TaskClass(data=..., seed=..., [width=...], [crop=...], [eval_data=...])` (only the options
given on the command line besides data and seed), after seeding, so the initial weights depend on --seed only.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

__all__ = ["TASKS", "add_train_parser", "build_task", "run_train"]

TASKS = ("depth", "irn", "relight", "shadow", "photo-shadow", "face")
DEFAULT_LR = 1e-3  # used when the task class has no `default_lr`


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add `train` to an argparse subparsers object; the parsed args run with `args.func(args)` (= run_train)."""
    p = subparsers.add_parser("train", help="train the depth, inverse-rendering, relighting-refiner, "
                              "shadow-refiner, photo-shadow or face correspondence network",
                              description="Train a network on rendered data (multiview or relighting pairs), COLMAP "
                              "workspaces, or faces rendered from a morphable model; under torchrun, data-parallel.")
    p.add_argument("task", choices=TASKS, help="depth: MegaDepth-style depth net; irn: InverseRenderNet; relight: "
                   "the relighting refiner; shadow: the shadow refiner; photo-shadow: the photo's shadow map (all "
                   "three need pairs rendered with --second-light); face: the face correspondence "
                   "network (--data is the morphable model file, faces are rendered on the fly)")
    p.add_argument("--data", type=Path, required=True,
                   help="multiview dataset folder (scene_*/scene.json) or COLMAP dense workspace(s); for face: "
                   "the morphable model file")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, logs, model.safetensors")
    p.add_argument("--steps", type=int, default=20000, help="optimizer steps (default 20000)")
    p.add_argument("--batch-size", type=int, default=8, help="global batch size (default 8)")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default: the task's, else {DEFAULT_LR})")
    p.add_argument("--width", type=float, help="network channel multiplier (default: the task's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and augmentation")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only: bf16, or fp16 + grad scaling)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="train on random H x W crops")
    p.add_argument("--colmap-size", type=int, nargs=2, metavar=("W", "H"),
                   help="resample COLMAP views to W x H (multiples of 16); ignored for multiview datasets")
    p.add_argument("--eval-data", type=Path, help="multiview dataset whose held-out split evaluates the net "
                   "(default: --data when it has one)")
    p.add_argument("--init", type=Path, help="start from these weights (.safetensors of the same architecture)")
    p.add_argument("--real-frames", type=Path, nargs="+", metavar="PATH",
                   help="face: unlabelled real videos, images or folders for self-supervised adaptation")
    p.add_argument("--num-workers", type=int, help="data loading processes per process (default: 0 on a CPU, "
                   "where loading is ~1 %% of a step and workers would compete with the network, else 4)")
    p.add_argument("--log-every", type=int, default=10, help="steps per log.csv row (default 10)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: --checkpoint-every)")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine", help="default cosine")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps (default 0)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 = off (default 1)")
    p.add_argument("--second-light", type=float, help="irn: share of pairs that are one view under the dataset's "
                   "two lights (datasets rendered with --second-light; default 0)")
    p.add_argument("--loss-weight", action="append", metavar="TERM=W",
                   help="irn, depth, shadow, photo-shadow: set one loss term's weight (irn: irn_losses.IRNLossWeights "
                   "names, e.g. shadow_sparsity=0.1; depth: gradient, ordinal or sky; shadow, photo-shadow: iou); "
                   "repeat for several")
    p.set_defaults(func=run_train)
    return p


def _task_class(name: str):
    if name == "depth":
        from .depth_task import DepthTask

        return DepthTask
    if name == "relight":
        from .relight_task import RelightTask

        return RelightTask
    if name == "shadow":
        from .shadow_task import ShadowTask

        return ShadowTask
    if name == "photo-shadow":
        from .photo_shadow_task import PhotoShadowTask

        return PhotoShadowTask
    if name == "face":
        from .face_task import FaceTask

        return FaceTask
    try:  # imported only when asked for: the IRN task is written separately
        from .irn_task import IRNTask
    except ImportError as e:
        raise ValueError(f"the irn training task is not available in this installation ({e})") from e
    return IRNTask


def _data_source(args):
    """--data as given, or a ColmapScenes resampled to --colmap-size when it is a COLMAP workspace folder."""
    data = Path(args.data)
    if args.task == "face":
        if not data.is_file():
            raise FileNotFoundError(f"no morphable model file at {data}: give the .bin (Surrey) or .npz model")
        return data
    if not data.is_dir():
        raise FileNotFoundError(f"no dataset folder at {data}")
    if any(data.glob("scene_*/scene.json")):
        return data
    from . import colmap

    if args.colmap_size is not None and any(s < 1 or s % 16 for s in args.colmap_size):
        raise ValueError(f"--colmap-size must be two multiples of 16 (the networks pool 4 times), "
                         f"got {args.colmap_size}")
    if not colmap.find_workspaces(data):
        return data
    scenes = colmap.ColmapScenes(data, size=tuple(args.colmap_size) if args.colmap_size is not None else None)
    if scenes.skipped:
        folder, name = scenes.skipped[0]
        print(f"note: {len(scenes.skipped)} registered images have no depth map and are not used (e.g. "
              f"{Path(folder) / 'images' / name})", file=sys.stderr)
    return scenes


def _loss_weights(pairs: list[str] | None) -> dict[str, float] | None:
    """--loss-weight TERM=W options -> {TERM: W} (None when none was given)."""
    if not pairs:
        return None
    weights = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--loss-weight takes TERM=W with a number W, got {pair!r}")
    return weights


def build_task(args):
    """Seed, then construct the task class for `args.task` with the options the command line gave."""
    from .trainer import seed_everything

    cls = _task_class(args.task)
    kwargs = {"data": _data_source(args), "seed": args.seed}
    for key, value in (("width", args.width), ("crop", args.crop), ("eval_data", args.eval_data),
                       ("real_frames", args.real_frames), ("second_light", args.second_light),
                       ("loss_weights", _loss_weights(args.loss_weight))):
        if value is not None:
            kwargs[key] = tuple(value) if key == "crop" else value
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params and not takes_any]
    if unknown:
        options = ", ".join("--loss-weight" if k == "loss_weights" else "--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"invrender train {args.task} does not take {options}")
    seed_everything(args.seed)  # the initial weights depend on the seed alone
    task = cls(**kwargs)
    if args.init is not None:  # fine-tuning or a warm restart: strictly the same architecture and width
        from ..nets import weights

        if Path(args.init).is_dir():
            raise ValueError(f"--init {args.init} is a folder: give a .safetensors weights file")
        try:
            task.model.load_state_dict(weights.load_state_dict(args.init), strict=True)
        except RuntimeError as e:  # names or shapes differ: another architecture or width
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            first = lines[1] if len(lines) > 1 else lines[0]  # the first mismatch, after torch's header line
            raise ValueError(f"--init {args.init} does not fit the {args.task} network ({first}): give weights of the "
                             "same architecture and --width") from e
    return task


def _check_run_folders(args) -> None:
    """ValueError for folders that cannot work, before any data is read or any step runs."""
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be an integer in [0, 2^32), got {args.seed}")
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    if out == data or data in out.parents:
        raise ValueError(f"--out {args.out} is inside the dataset --data {args.data}: give a run folder outside it")
    if args.eval_data is not None:
        from .data import list_scenes

        if not list_scenes(args.eval_data, "heldout"):
            raise ValueError(f"--eval-data {args.eval_data} has no held-out scenes to evaluate on: give a dataset "
                             "rendered with held-out scenes, or leave --eval-data out")


def run_train(args) -> dict:
    """Build the task and a Trainer from parsed `train` arguments, train, and return the run summary."""
    from .trainer import Trainer, resolve_device

    if args.steps < 1 or args.batch_size < 1:
        raise ValueError("--steps and --batch-size must be positive")
    _check_run_folders(args)
    task = build_task(args)
    lr = args.lr if args.lr is not None else float(getattr(task, "default_lr", DEFAULT_LR))
    workers = args.num_workers
    if workers is None:
        workers = 0 if resolve_device(args.device).type == "cpu" else min(4, os.cpu_count() or 1)
    trainer = Trainer(task, args.out, device=args.device, batch_size=args.batch_size, lr=lr, steps=args.steps,
                      seed=args.seed, amp=args.amp, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
                      num_workers=workers, schedule=args.schedule, warmup_steps=args.warmup_steps,
                      grad_clip=args.grad_clip or None, eval_every=args.eval_every)
    summary = trainer.fit(resume=args.resume)
    if summary.get("model_file"):
        ev = " ".join(f"{k} {v:.4g}" for k, v in summary["eval"].items())
        print(f"trained {args.task} for {summary['step']} steps ({summary['steps_per_s']:.2f} steps/s on "
              f"{summary['device']}); wrote {Path(args.out) / summary['model_file']}" + (f"; eval: {ev}" if ev else ""),
              file=sys.stderr)
    return summary
