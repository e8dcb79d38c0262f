"""A generic training loop shared by the depth and inverse-rendering networks.

A *task* supplies the network and its data and losses (see `Task`); `Trainer` does the rest: device choice,
mixed precision on CUDA, AdamW with a cosine / step / constant schedule, gradient clipping, seeding, periodic
checkpoints with exact resume, a progress line, `log.csv`, `eval.csv`, `summary.json` and the final weights as
`model.safetensors`. Run under `torchrun --nproc_per_node N` it trains data-parallel (DDP): one process per GPU
(or CPU process with gloo), each seeing a 1/N share of every global batch, rank 0 writing all files.

Determinism: every step's global batch is a fixed block of a per-epoch permutation seeded by (seed, epoch), so
a given `batch_size` sees the same data in the same steps whatever the number of processes; each rank takes
its contiguous share. Datasets with a `set_epoch(epoch)` method (ours) get it before each epoch. Checkpoints
hold the model, optimizer, scheduler, grad scaler, step, and every rank's RNG states, so `fit(resume=True)`
continues as if never interrupted (bitwise on CPU for a fixed thread count). BatchNorm statistics are per
process under DDP (no SyncBatchNorm), as usual; DDP then equals single-process training only for models
without batch statistics.

Files in out_dir:
    checkpoint.pt       torch.save of plain data (tensors, numbers, strings): loads with weights_only=True
    log.csv             step, time (s, cumulative over resumes), lr, grad_norm, then each loss term: means over
                        the steps since the previous row
    eval.csv            step, then the task's evaluation metrics (when the task has `evaluate`)
    summary.json        run summary: config, device, speed, last losses, last evaluation
    model.safetensors   the final model.state_dict() (written when training reaches `steps`)
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..io.folders import missing_folders, remove_empty_folders, write_atomic

__all__ = [
    "CHECKPOINT_FORMAT",
    "StepBatchSampler",
    "Task",
    "Trainer",
    "load_checkpoint",
    "lr_factor",
    "resolve_device",
    "seed_everything",
    "unwrap_model",
]

CHECKPOINT_FORMAT = "invrender-train-checkpoint-1"
SCHEDULES = ("cosine", "step", "constant")
STEP_MILESTONES = (0.6, 0.85)  # "step" schedule: lr x 0.1 after 60 % and again after 85 % of the steps
# Settings that must not change when resuming, or the continuation would not be the same run.
_RESUME_FIXED = ("batch_size", "lr", "seed", "world_size", "weight_decay", "schedule", "warmup_steps",
                 "min_lr_ratio", "grad_clip", "dataset_len", "task", "task_settings")
# What a run folder holds: a new run never starts in a folder that has any of them (they would be overwritten).
CHECKPOINT_FILE = "checkpoint.pt"
RUN_FILES = (CHECKPOINT_FILE, "model.safetensors", "log.csv", "eval.csv", "summary.json")
# Task attributes that may change between a run and its resumption (where the data is, what is scored).
_RESUME_FREE = ("data", "eval_data", "eval_views", "eval_views_count", "eval_count", "real_frames")


class Task(Protocol):
    """What `Trainer` needs from a task.

    model: the nn.Module to train (the trainer moves it to the device; build it after `seed_everything`).
    make_dataset(): a map-style torch Dataset whose items collate into a dict of tensors (called once per fit).
    compute_losses(model, batch) -> dict[str, Tensor]: 0-dim losses, "total" (the one minimised) plus any
        terms to log. `model` may be DDP-wrapped: call it, and use `unwrap_model(model)` for attributes.
        `batch` is on the device. It runs under autocast when mixed precision is on: cast network outputs to
        float32 before precision-sensitive losses.
    evaluate(model) -> dict[str, float] (optional): metrics on held-out data; called on rank 0 with the
        unwrapped model in eval() mode under no_grad, every `eval_every` steps and at the end.
    find_unused_parameters (optional attribute, bool): passed to DDP.
    """

    model: nn.Module

    def make_dataset(self) -> torch.utils.data.Dataset: ...

    def compute_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global RNG is the one third-party code draws from
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when PyTorch sees a GPU, else cpu; "cpu"; "cuda" / "cuda:N" (ValueError without a GPU)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU; use --device cpu")
        return torch.device(device)
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def lr_factor(step: int, steps: int, schedule: str, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based) of `steps`.

    Linear warm-up over `warmup_steps` ((step + 1) / warmup_steps), then: "cosine" from 1 down to min_lr_ratio
    at the last step; "step" x0.1 after each of STEP_MILESTONES (fractions of `steps`); "constant" 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(max((step - warmup_steps) / max(steps - warmup_steps, 1), 0.0), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return 0.1 ** sum(step >= m * steps for m in STEP_MILESTONES)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


class StepBatchSampler(torch.utils.data.Sampler):
    """This rank's index lists for the steps of one epoch, from step `start` on.

    Global batch k of epoch e is block k (of `batch_size` indices) of a permutation of range(n) seeded by
    (seed, e); the trailing n mod batch_size indices are dropped. Rank r of `world_size` takes the r-th
    contiguous share of batch_size / world_size indices, so the union over ranks is the global batch.
    """

    def __init__(self, n: int, batch_size: int, world_size: int, rank: int, seed: int, epoch: int, start: int = 0):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed, self.epoch, self.start = seed, epoch, start
        self.steps = n // batch_size

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        perm = torch.randperm(self.n, generator=g)
        share = self.batch_size // self.world_size
        for k in range(self.start, self.steps):
            first = k * self.batch_size + self.rank * share
            yield perm[first:first + share].tolist()


def _worker_init(worker_id: int) -> None:
    # torch gives each worker seed base_seed + worker_id (base_seed from the loader's generator); numpy and
    # random are derived from it so tasks' datasets that use them differ per worker yet are reproducible.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - see seed_everything
    random.seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# ---------- RNG state as plain data (weights_only-loadable) ----------

def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - checkpointing the global RNG
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
        "python_version": int(py_version),
        "python_state": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = {"bit_generator": "MT19937",
                   "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
                   "has_gauss": state["numpy_has_gauss"], "gauss": state["numpy_gauss"]}
    np.random.set_state(numpy_state)  # noqa: NPY002 - restoring the global RNG
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"]), state["python_gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint(path: str | Path) -> dict:
    """Read a trainer checkpoint safely (torch.load with weights_only=True) and check its format tag."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways; one message for all
        raise ValueError(f"{path} is not a readable trainer checkpoint ({type(e).__name__}); start a new run "
                         f"in another --out") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an {CHECKPOINT_FORMAT} checkpoint")
    return ckpt


class _Progress:
    """One status line on stderr: rewritten in place on a terminal, printed every `every` steps otherwise."""

    def __init__(self, total: int, every: int, enabled: bool, stream=None):
        self.total, self.every, self.enabled = total, max(every, 1), enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_draw = 0.0

    def update(self, step: int, rate: float, losses: dict[str, float], lr: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        due = force or step == self.total or (now - self.last_draw > 0.2 if self.tty else step % self.every == 0)
        if not due:
            return
        self.last_draw = now
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        terms = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        line = (f"step {step}/{self.total} [{100 * step / self.total:3.0f}%] {rate:.2f} it/s eta {eta_text} "
                f"lr {lr:.3g} | {terms}")
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if step == self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()


class _CsvLog:
    """Append-only CSV with a fixed header; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path):
        self.path, self.header = path, None

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        self.header = rows[0]
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        buf = io.StringIO()
        csv.writer(buf).writerows(kept)
        write_atomic(self.path, lambda tmp: tmp.write_text(buf.getvalue()))

    def write(self, row: dict[str, Any]) -> None:
        if self.header is None:
            self.header = list(row)
            if not self.path.is_file() or self.path.stat().st_size == 0:
                with self.path.open("w", newline="") as f:
                    csv.writer(f).writerow(self.header)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.header])


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class Trainer:
    """Train `task.model` on `task.make_dataset()` with `task.compute_losses`; see the module docstring.

    Args:
        task: a `Task`.
        out_dir: folder for checkpoint.pt, log.csv, eval.csv, summary.json, model.safetensors (created).
        device: "auto" | "cpu" | "cuda" (under torchrun with CUDA, each process uses cuda:LOCAL_RANK).
        batch_size: GLOBAL batch size (split evenly over the processes).
        lr: peak learning rate of AdamW.
        steps: total optimizer steps.
        seed: seeds the data order, the datasets' augmentation (via set_epoch) and the RNGs of each rank.
        amp: mixed precision on CUDA (bf16 where supported, else fp16 with a GradScaler); ignored on CPU.
        log_every: steps between log.csv rows (and progress lines when stderr is not a terminal).
        checkpoint_every: steps between checkpoints (one is always written at the end).
        num_workers: DataLoader worker processes per rank.
        weight_decay: AdamW's decoupled weight decay.
        schedule: "cosine" (default), "step" or "constant"; warmup_steps, min_lr_ratio: see `lr_factor`.
        grad_clip: max global gradient norm (None or 0: no clipping; the norm is logged either way).
        eval_every: steps between evaluations (default: checkpoint_every); the last step always evaluates.
        amp_dtype: "auto", "bf16" or "fp16".
        progress: print the progress line on stderr (rank 0).
    """

    def __init__(self, task: Task, out_dir: str | Path, device: str = "auto", batch_size: int = 8, lr: float = 1e-3,
                 steps: int = 1000, seed: int = 0, amp: bool = False, log_every: int = 10,
                 checkpoint_every: int = 500, num_workers: int = 0, *, weight_decay: float = 1e-4,
                 schedule: str = "cosine", warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                 grad_clip: float | None = 1.0, eval_every: int | None = None, amp_dtype: str = "auto",
                 progress: bool = True):
        for name in ("model", "make_dataset", "compute_losses"):
            if not hasattr(task, name):
                raise TypeError(f"task {type(task).__name__} lacks {name!r} (see invrender_core.train.trainer.Task)")
        for name, value in (("batch_size", batch_size), ("steps", steps), ("log_every", log_every),
                            ("checkpoint_every", checkpoint_every)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if grad_clip is not None and not (grad_clip >= 0 and math.isfinite(grad_clip)):
            raise ValueError(f"grad_clip must be a number >= 0 (0: no clipping), got {grad_clip!r}")
        if eval_every is not None and (int(eval_every) != eval_every or eval_every < 1):
            raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if amp_dtype not in ("auto", "bf16", "fp16"):
            raise ValueError(f"amp_dtype must be 'auto', 'bf16' or 'fp16', got {amp_dtype!r}")
        if num_workers < 0 or warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError("num_workers and warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        self.task, self.out_dir = task, Path(out_dir)
        self.device_request = device
        self.batch_size, self.lr, self.steps, self.seed = int(batch_size), float(lr), int(steps), int(seed)
        self.amp, self.amp_dtype = bool(amp), amp_dtype
        self.log_every, self.checkpoint_every = int(log_every), int(checkpoint_every)
        self.eval_every = int(eval_every) if eval_every else self.checkpoint_every
        self.num_workers, self.weight_decay = int(num_workers), float(weight_decay)
        self.schedule, self.warmup_steps, self.min_lr_ratio = schedule, int(warmup_steps), float(min_lr_ratio)
        self.grad_clip = float(grad_clip) if grad_clip else None
        self.progress = progress
        resolve_device(device)  # an impossible device fails at construction, before any data is read

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    # ----- distributed setup -----

    def _setup_distributed(self) -> tuple[int, int, int, bool]:
        """(rank, world size, local rank, whether this call initialised the process group)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return 0, 1, 0, False
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        created = False
        if not dist.is_initialized():
            use_cuda = resolve_device(self.device_request).type == "cuda"
            if use_cuda:
                torch.cuda.set_device(local_rank)
            # DDP imports torch._dynamo lazily; imported while a process group exists, it keeps references to
            # the group, so destroy_process_group leaves gloo's threads running and the process sometimes
            # aborts at exit ("terminate called without an active exception"). Importing it first avoids that.
            importlib.import_module("torch._dynamo")
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            created = True
        return dist.get_rank(), dist.get_world_size(), local_rank, created

    def _config(self, world: int, dataset_len: int) -> dict:
        return {"batch_size": self.batch_size, "lr": self.lr, "steps": self.steps, "seed": self.seed,
                "world_size": world, "weight_decay": self.weight_decay, "schedule": self.schedule,
                "warmup_steps": self.warmup_steps, "min_lr_ratio": self.min_lr_ratio,
                "grad_clip": self.grad_clip if self.grad_clip is not None else 0.0, "dataset_len": dataset_len,
                "task": type(self.task).__name__, "task_settings": _task_settings(self.task)}

    # ----- the loop -----

    def fit(self, resume: bool = False, stop_at: int | None = None) -> dict:
        """Train until `steps` (or until step `stop_at`, e.g. to split a run into time slices); return the summary.

        resume=True continues from out_dir/checkpoint.pt (FileNotFoundError without one); resume=False refuses
        an out_dir that already holds any of RUN_FILES, so no run (nor a user's file of those names) is overwritten.
        """
        rank, world, local_rank, created_group = self._setup_distributed()
        created = missing_folders(self.out_dir)
        try:
            try:
                summary = self._fit(rank, world, local_rank, resume, stop_at)
            except BaseException:  # a run that failed before writing anything leaves no empty --out behind
                if rank == 0:
                    remove_empty_folders(created)
                raise
            if created_group:  # every rank has finished its collectives before any rank tears the group down
                dist.barrier()
            return summary
        finally:
            if created_group:
                dist.destroy_process_group()

    def _fit(self, rank: int, world: int, local_rank: int, resume: bool, stop_at: int | None) -> dict:
        device = resolve_device(self.device_request)
        if device.type == "cuda" and world > 1:
            device = torch.device("cuda", local_rank)
        main = rank == 0
        progress = _Progress(self.steps, self.log_every, self.progress and main)
        end = self.steps if stop_at is None else min(int(stop_at), self.steps)
        if self.batch_size % world:
            raise ValueError(f"--batch-size {self.batch_size} must be divisible by the {world} processes")
        held = [name for name in RUN_FILES if (self.out_dir / name).exists()]
        if not resume and held:
            raise ValueError(f"{self.out_dir} already holds a run's files ({', '.join(held)}): pass --resume to "
                             f"continue it, or choose another --out")
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)

        use_amp = self.amp and device.type == "cuda"
        if self.amp and not use_amp:
            progress.message("note: --amp ignored, mixed precision is used on CUDA only")
        amp_dtype = None
        if use_amp:
            bf16_ok = torch.cuda.is_bf16_supported()
            amp_dtype = torch.float16 if self.amp_dtype == "fp16" or (self.amp_dtype == "auto" and not bf16_ok) \
                else torch.bfloat16

        seed_everything(self.seed + rank)  # per-rank streams for loss-time randomness; data order is separate
        model = self.task.model.to(device)
        dataset = self.task.make_dataset()
        steps_per_epoch = len(dataset) // self.batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch of {self.batch_size}: "
                             "lower --batch-size or add data")
        config = self._config(world, len(dataset))
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps, schedule, warmup, min_ratio = self.steps, self.schedule, self.warmup_steps, self.min_lr_ratio

        def factor(s: int) -> float:  # a plain function: LambdaLR's state_dict then stores no closure state
            return lr_factor(s, steps, schedule, warmup, min_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        step, elapsed_before = 0, 0.0
        log, eval_log = _CsvLog(self.out_dir / "log.csv"), _CsvLog(self.out_dir / "eval.csv")
        if resume:
            ckpt = load_checkpoint(self.checkpoint_path)
            changed = _changed_settings(ckpt["config"], config)
            if changed:
                raise ValueError(f"cannot resume {self.checkpoint_path} with different settings ({'; '.join(changed)})"
                                 "; use the original ones or start a new run in another --out")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt["scaler"]:
                scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"][rank], device)
            step, elapsed_before = int(ckpt["step"]), float(ckpt["elapsed_s"])
            if main:
                log.truncate_after(step)
                eval_log.truncate_after(step)
            progress.message(f"resumed {self.checkpoint_path} at step {step}")
            summary_file = self.out_dir / "summary.json"
            if step >= end and summary_file.exists():  # nothing to train: keep the run's summary as it is
                progress.message(f"the run is already at step {step}: nothing to do (a larger --steps trains on)")
                return json.loads(summary_file.read_text())

        train_model = model
        if world > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(self.task, "find_unused_parameters", False)))
        train_model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        has_eval = callable(getattr(self.task, "evaluate", None))
        last_eval: dict = {}
        interval: dict[str, float] = {}
        interval_steps, last_losses = 0, {}
        if resume and "log_interval" in ckpt:  # (checkpoints before stop 33 lack it: that row restarts)
            interval, interval_steps = dict(ckpt["log_interval"]["sums"]), int(ckpt["log_interval"]["steps"])
        run_start, run_start_step = time.perf_counter(), step

        def save_checkpoint(at_step: int) -> None:
            rng = _rng_state(device)
            states = [None] * world
            if world > 1:
                dist.all_gather_object(states, rng)
            else:
                states = [rng]
            if not main:
                return
            ckpt = {"format": CHECKPOINT_FORMAT, "step": at_step,
                    "elapsed_s": elapsed_before + time.perf_counter() - run_start,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rng": states, "config": config,
                    # the log row in progress, so a resumed run writes the row an uninterrupted one would
                    "log_interval": {"sums": dict(interval), "steps": interval_steps}}
            write_atomic(self.checkpoint_path, lambda tmp: torch.save(ckpt, tmp))

        def run_eval(at_step: int) -> None:
            nonlocal last_eval
            if has_eval and main:
                model.eval()
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in self.task.evaluate(model).items()}
                model.train()
                if metrics:
                    eval_log.write({"step": at_step, **metrics})
                    progress.message(f"eval at step {at_step}: " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                last_eval = metrics
            if has_eval and world > 1:
                dist.barrier()

        try:
            while step < end:
                epoch, first = divmod(step, steps_per_epoch)
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
                sampler = StepBatchSampler(len(dataset), self.batch_size, world, rank, self.seed, epoch, first)
                loader_seed = int(np.random.SeedSequence([self.seed, epoch, rank, 1]).generate_state(1)[0])
                # A generator of its own: the loader must not draw from the global torch RNG, whose stream
                # (checkpointed) belongs to the losses.
                loader = torch.utils.data.DataLoader(
                    dataset, batch_sampler=sampler, num_workers=self.num_workers,
                    pin_memory=device.type == "cuda", worker_init_fn=_worker_init if self.num_workers else None,
                    generator=torch.Generator().manual_seed(loader_seed))
                for batch in loader:
                    batch = _to_device(batch, device)
                    autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext()
                    try:
                        with autocast:
                            losses = self.task.compute_losses(train_model, batch)
                    except torch.linalg.LinAlgError as e:  # e.g. the lighting's least squares, once weights blow up
                        raise FloatingPointError(f"training diverged at step {step + 1} (a singular linear system: "
                                                 f"{str(e).splitlines()[0]}): lower --lr, or check the data") from e
                    total = _check_losses(losses)
                    values = torch.stack([v.detach().float() for v in losses.values()])
                    if world > 1:
                        dist.all_reduce(values)
                        values /= world
                    values = values.cpu().tolist()
                    last_losses = dict(zip(losses, values, strict=True))
                    if not math.isfinite(last_losses["total"]) and not scaler.is_enabled():
                        # Every rank sees the same reduced value, so all stop together.
                        raise FloatingPointError(f"the loss became {last_losses['total']} at step {step + 1}: "
                                                 "lower --lr, or check the data")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(total).backward()
                    scaler.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(
                        params, self.grad_clip if self.grad_clip is not None else float("inf")))
                    lr_now = optimizer.param_groups[0]["lr"]
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1

                    for k, v in last_losses.items():
                        interval[k] = interval.get(k, 0.0) + v
                    interval["grad_norm"] = interval.get("grad_norm", 0.0) + grad_norm
                    interval_steps += 1
                    rate = (step - run_start_step) / max(time.perf_counter() - run_start, 1e-9)
                    progress.update(step, rate, last_losses, lr_now)
                    if main and (step % self.log_every == 0 or step == end):
                        means = {k: v / interval_steps for k, v in interval.items()}
                        log.write({"step": step, "time": elapsed_before + time.perf_counter() - run_start,
                                   "lr": lr_now, "grad_norm": means.pop("grad_norm"), **means})
                        interval, interval_steps = {}, 0
                    if step % self.checkpoint_every == 0 or step == end:
                        save_checkpoint(step)  # before evaluating: a failing evaluation loses no training
                    if step % self.eval_every == 0 or step == self.steps:
                        run_eval(step)
                    if step >= end:
                        break
        except KeyboardInterrupt:
            if world == 1 and step > run_start_step and step % self.checkpoint_every and step != end:
                save_checkpoint(step)  # nothing lost: --resume continues from here
                progress.message(f"interrupted: saved {self.checkpoint_path} at step {step}; --resume continues")
            raise

        run_time = time.perf_counter() - run_start
        summary = {
            "task": type(self.task).__name__, "step": step, "steps": self.steps, "completed": step >= self.steps,
            "device": str(device), "world_size": world,
            "amp": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype),
            "parameters": sum(p.numel() for p in model.parameters()),
            "time_s": elapsed_before + run_time, "run_steps": step - run_start_step,
            "steps_per_s": (step - run_start_step) / run_time if run_time > 0 else None,
            "last_losses": last_losses, "eval": last_eval, "config": config,
        }
        if main:
            if step >= self.steps:
                save_safetensors(model, self.out_dir / "model.safetensors",
                                 {"task": summary["task"], "step": str(summary["step"]), "format": "pt"})
                summary["model_file"] = "model.safetensors"
            text = json.dumps(summary, indent=1) + "\n"
            write_atomic(self.out_dir / "summary.json", lambda tmp: tmp.write_text(text))
        return summary


def _changed_settings(before: dict, now: dict) -> list[str]:
    """'name old -> new' for each `_RESUME_FIXED` setting (and task setting) that differs; settings a checkpoint
    predates are not compared."""
    changed = []
    for key in _RESUME_FIXED:
        if key not in before or before[key] == now[key]:
            continue
        if isinstance(now[key], dict):
            changed += [f"{name} {before[key].get(name)} -> {now[key].get(name)}"
                        for name in sorted(set(before[key]) | set(now[key]))
                        if before[key].get(name) != now[key].get(name)]
        else:
            changed.append(f"{key} {before[key]!r} -> {now[key]!r}")
    return changed


def _task_settings(task) -> dict:
    """A task's settings that must not change on resumption, as text: its plain attributes (crop, loss weights,
    ...) and its model's class and size (the width)."""
    settings = {}
    for name, value in sorted(vars(task).items()):
        if name.startswith("_") or name in _RESUME_FREE:
            continue
        if value is None or isinstance(value, bool | int | float | str | tuple) or dataclasses.is_dataclass(value):
            settings[name] = repr(value)
    model = task.model
    settings["model"] = f"{type(model).__name__}, {sum(p.numel() for p in model.parameters())} parameters"
    return settings


def _check_losses(losses) -> torch.Tensor:
    if not isinstance(losses, dict) or "total" not in losses:
        raise TypeError("compute_losses must return a dict of 0-dim tensors with a 'total' entry")
    for k, v in losses.items():
        if not isinstance(v, torch.Tensor) or v.ndim != 0:
            raise TypeError(f"compute_losses returned {k!r} = {type(v).__name__} "
                            f"{tuple(getattr(v, 'shape', ()))}; every loss must be a 0-dim tensor")
    if not losses["total"].requires_grad:
        raise ValueError("the 'total' loss has no gradient: compute it from the model's output")
    return losses["total"]


def checked_loss_weights(loss_weights: dict[str, float] | None, known) -> dict[str, float]:
    """A task's `loss_weights` overrides ({} for None) as floats, after checking that every name is one of the
    `known` loss terms (ValueError naming the unknown ones and the known) and that no weight is negative."""
    weights = {name: float(w) for name, w in (loss_weights or {}).items()}
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ValueError(f"unknown loss terms {unknown}; known terms are {sorted(known)}")
    negative = {name: w for name, w in weights.items() if not w >= 0}
    if negative:
        raise ValueError(f"loss weights must be >= 0, got {negative}")
    return weights


def save_safetensors(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write model.state_dict() to `path` (safetensors, atomically) with string `metadata`."""
    from safetensors.torch import save_file

    # clone(): safetensors refuses tensors that share storage (e.g. tied weights); CPU and contiguous anyway.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
