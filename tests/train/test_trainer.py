"""The generic trainer, the depth task and `invrender train`: exact resume, safe checkpoints, logs, DDP with gloo,
learning on a tiny generated dataset."""

import argparse
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from invrender_core.train.cli import add_train_parser
from invrender_core.train.data import write_scene_json, write_view
from invrender_core.train.depth_task import DepthTask, depth_input
from invrender_core.train.trainer import StepBatchSampler, Trainer, load_checkpoint, lr_factor, seed_everything

SIDE = 32


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets are all per-op overhead: with two OpenMP threads on shared cores, thread synchronisation can
    cost 100x; one thread is fast (and results do not depend on the thread count within a test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_depth_dataset(root, scenes=4, views=3, heldout=1, seed=0):
    """Tilted planes seen head-on, with haze: the photo brightens with depth, so depth is learnable from it."""
    rng = np.random.default_rng(seed)
    f = SIDE / (2 * math.tan(math.radians(30)))
    K = np.array([[f, 0, SIDE / 2], [0, f, SIDE / 2], [0, 0, 1.0]])
    u, v = np.meshgrid(np.arange(SIDE) + 0.5, np.arange(SIDE) + 0.5)
    for s in range(scenes + heldout):
        scene_dir = root / f"scene_{s:05d}"
        scene_dir.mkdir(parents=True)
        names = []
        for k in range(views):
            gx, gy = rng.uniform(-0.8, 0.8, 2)  # steep planes: depth varies several-fold across a view
            # Plane z = -(d0 + gx x + gy y) in the camera frame: inverse depth is affine in the pixel coordinates.
            inv = (1 - gx * (u - SIDE / 2) / f + gy * (v - SIDE / 2) / f) / rng.uniform(2, 6)
            depth = (1 / np.maximum(inv, 1e-3)).astype(np.float32)
            haze = 1 - np.exp(-depth / 4)
            texture = 0.1 * rng.random((SIDE, SIDE, 1))
            linear = np.clip(haze[..., None] * [0.8, 0.85, 0.9] + texture, 0, 1)
            image = np.round((linear ** (1 / 2.2)) * 255).astype(np.uint8)
            name = f"view_{k:02d}.npz"
            write_view(scene_dir / name, {
                "image": image, "depth_mvs": depth * (1 + 0.01 * rng.standard_normal(depth.shape)).astype(np.float32),
                "K": K, "cam_to_world": np.eye(4), "exposure": np.float32(1), "gt_depth": depth,
                "gt_normal": np.zeros((SIDE, SIDE, 3), np.float16), "gt_albedo": np.zeros((SIDE, SIDE, 3), np.float16),
                "gt_shadow": np.ones((SIDE, SIDE), np.float16), "sky_mask": np.zeros((SIDE, SIDE), bool),
                "gt_sh_camera": np.zeros((9, 3), np.float32)})
            names.append(name)
        write_scene_json(scene_dir, {"seed": s, "split": "train" if s < scenes else "heldout", "width": SIDE,
                                     "height": SIDE, "views": names, "sh_world": np.zeros((9, 3)).tolist()})
    return root


@pytest.fixture(scope="module")
def depth_root(tmp_path_factory):
    return make_depth_dataset(tmp_path_factory.mktemp("depth"))


def depth_task(root, **kw):
    seed_everything(0)  # the initial weights
    return DepthTask(root, width=1 / 16, eval_views=3, num_pairs=64, **kw)


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_lr_factor_schedules():
    assert lr_factor(0, 100, "cosine") == 1.0
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(4, 100, "cosine", warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor(10, 100, "cosine", warmup_steps=10) == 1.0
    assert [lr_factor(s, 100, "step") for s in (59, 60, 85)] == [1.0, pytest.approx(0.1), pytest.approx(0.01)]
    assert lr_factor(99, 100, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, "linear")


def test_step_batch_sampler_shares_one_global_batch():
    single = list(StepBatchSampler(22, 8, 1, 0, seed=3, epoch=1))
    ranks = [list(StepBatchSampler(22, 8, 2, r, seed=3, epoch=1)) for r in range(2)]
    assert len(single) == 2 and all(len(b) == 8 for b in single)  # 22 // 8 steps, the rest dropped
    for k in range(2):
        assert ranks[0][k] + ranks[1][k] == single[k]
    assert list(StepBatchSampler(22, 8, 1, 0, seed=3, epoch=1, start=1)) == single[1:]
    assert list(StepBatchSampler(22, 8, 1, 0, seed=3, epoch=2)) != single
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(22, 7, 2, 0, 0, 0)


def test_depth_input_is_srgb_encoding():
    x = torch.tensor([0.0, 0.002, 0.0031308, 0.18, 1.0, 1.5]).reshape(1, 3, 1, 2)
    expected = [0.0, 12.92 * 0.002, 12.92 * 0.0031308, 1.055 * 0.18 ** (1 / 2.4) - 0.055, 1.0, 1.0]
    np.testing.assert_allclose(depth_input(x).flatten().numpy(), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        depth_input(torch.zeros(3, 4, 4))


def test_resume_continues_exactly(depth_root, tmp_path):
    kw = dict(device="cpu", batch_size=4, lr=2e-3, steps=5, seed=1, log_every=1, checkpoint_every=2,
              progress=False)
    straight = Trainer(depth_task(depth_root), tmp_path / "a", **kw).fit()
    # 12 items / 4 = 3 steps per epoch: stopping at 2 resumes mid-epoch, and the rest crosses into epoch 1.
    first = Trainer(depth_task(depth_root), tmp_path / "b", **kw).fit(stop_at=2)
    assert first["step"] == 2 and not first["completed"] and not (tmp_path / "b" / "model.safetensors").exists()
    resumed = Trainer(depth_task(depth_root), tmp_path / "b", **kw).fit(resume=True)
    assert straight["completed"] and resumed["completed"]

    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise: same data, same RNG streams, same optimizer state
    rows_a, rows_b = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "b" / "log.csv")
    assert [r["step"] for r in rows_b] == ["1", "2", "3", "4", "5"]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in ra.items() if k != "time"} == {k: v for k, v in rb.items() if k != "time"}
    assert straight["eval"] == resumed["eval"] and "si_log_rmse" in straight["eval"]


def test_worker_processes_do_not_change_the_result(depth_root, tmp_path, capsys):
    kw = dict(device="cpu", batch_size=4, steps=2, seed=4, checkpoint_every=2)
    Trainer(depth_task(depth_root, crop=(16, 16)), tmp_path / "w0", num_workers=0, progress=False, **kw).fit()
    # Also: --amp on a CPU is ignored with a note, and the progress line reaches stderr.
    summary = Trainer(depth_task(depth_root, crop=(16, 16)), tmp_path / "w2", num_workers=2, amp=True,
                      log_every=1, **kw).fit()
    err = capsys.readouterr().err
    assert "--amp ignored" in err and "step 2/2 [100%]" in err and summary["amp"] is None
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "w0" / "model.safetensors"), load_file(tmp_path / "w2" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k  # augmentation depends on (seed, epoch, index) only


def interrupting(task, at):
    """`task`, its compute_losses raising KeyboardInterrupt in the `at`-th call, as Ctrl-C would (the same task
    otherwise: resuming checks that the task is)."""
    compute_losses, calls = task.compute_losses, []

    def interrupted(model, batch):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return compute_losses(model, batch)

    task.compute_losses = interrupted
    return task


def test_interrupt_saves_a_checkpoint_that_resumes_exactly(depth_root, tmp_path):
    kw = dict(device="cpu", batch_size=4, steps=4, seed=2, checkpoint_every=100, progress=False)
    Trainer(depth_task(depth_root), tmp_path / "a", **kw).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(interrupting(depth_task(depth_root), at=3), tmp_path / "b", **kw).fit()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 2
    Trainer(depth_task(depth_root), tmp_path / "b", **kw).fit(resume=True)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The log row the interruption split averages all its steps, as the uninterrupted run's does.
    rows_a, rows_b = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "b" / "log.csv")
    assert [{k: v for k, v in r.items() if k != "time"} for r in rows_a] == \
        [{k: v for k, v in r.items() if k != "time"} for r in rows_b]


def test_checkpoint_is_plain_data_and_logs_are_written(depth_root, tmp_path):
    out = tmp_path / "run"
    summary = Trainer(depth_task(depth_root), out, device="cpu", batch_size=4, steps=4, log_every=2,
                      checkpoint_every=2, progress=False).fit()
    assert summary["step"] == 4 and summary["steps_per_s"] > 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)  # no arbitrary objects inside
    assert ckpt["step"] == 4 and ckpt["format"] == "invrender-train-checkpoint-1"
    assert load_checkpoint(out / "checkpoint.pt")["config"]["batch_size"] == 4
    model = depth_task(depth_root).model
    model.load_state_dict(ckpt["model"])
    rows = read_log(out / "log.csv")
    assert list(rows[0]) == ["step", "time", "lr", "grad_norm", "total", "si_log", "gradient", "ordinal", "sky"]
    assert [int(r["step"]) for r in rows] == [2, 4]
    for r in rows:  # total = si + 0.5 grad + 0.1 ordinal, also for the logged interval means
        assert float(r["total"]) == pytest.approx(float(r["si_log"]) + 0.5 * float(r["gradient"])
                                                  + 0.1 * float(r["ordinal"]), rel=1e-4)
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4)), rel=1e-5)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["completed"] and saved["model_file"] == "model.safetensors" and saved["world_size"] == 1
    assert saved["parameters"] == sum(p.numel() for p in model.parameters())
    evals = read_log(out / "eval.csv")
    assert [int(r["step"]) for r in evals] == [2, 4] and float(evals[-1]["eval_views"]) == 3
    from invrender_core.nets import weights

    weights.load_model(out / "model.safetensors", depth_task(depth_root).model)  # strict load of the export


def test_run_folder_protection_and_resume_checks(depth_root, tmp_path):
    out = tmp_path / "run"
    Trainer(depth_task(depth_root), out, device="cpu", batch_size=4, steps=2, progress=False).fit()
    summary = (out / "summary.json").read_text()
    again = Trainer(depth_task(depth_root), out, device="cpu", batch_size=4, steps=2, progress=False).fit(resume=True)
    assert (out / "summary.json").read_text() == summary and again["last_losses"]  # a finished run is kept as it was
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(depth_task(depth_root), out, device="cpu", batch_size=4, steps=2, progress=False).fit()
    with pytest.raises(ValueError, match="batch_size 4 -> 2"):
        Trainer(depth_task(depth_root), out, device="cpu", batch_size=2, steps=4, progress=False).fit(resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(depth_task(depth_root), tmp_path / "new", device="cpu", progress=False).fit(resume=True)
    (out / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable trainer checkpoint"):
        load_checkpoint(out / "checkpoint.pt")


def test_trainer_argument_and_task_errors(depth_root, tmp_path):
    task = depth_task(depth_root)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Trainer(task, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="device must be"):
        Trainer(task, tmp_path, device="tpu")
    class NoLosses:
        model = nn.Linear(2, 1)

        def make_dataset(self):
            return []

    with pytest.raises(TypeError, match="lacks 'compute_losses'"):
        Trainer(NoLosses(), tmp_path)
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(task, tmp_path / "new" / "big", device="cpu", batch_size=64, progress=False).fit()
    assert not (tmp_path / "new").exists()  # a run that failed before writing leaves no empty folders

    class NoTotal:
        model = nn.Linear(2, 1)

        def make_dataset(self):
            return [{"x": torch.ones(2)}] * 4

        def compute_losses(self, model, batch):
            return {"mse": model(batch["x"]).pow(2).mean()}

    with pytest.raises(TypeError, match="'total' entry"):
        Trainer(NoTotal(), tmp_path / "nt", device="cpu", batch_size=2, progress=False).fit()


def test_depth_task_learns(depth_root, tmp_path):
    out = tmp_path / "learn"
    Trainer(depth_task(depth_root), out, device="cpu", batch_size=4, lr=3e-3, steps=40, log_every=10,
            checkpoint_every=40, schedule="constant", progress=False).fit()
    rows = read_log(out / "log.csv")  # means over steps 1-10, ..., 31-40
    assert float(rows[-1]["total"]) < 0.6 * float(rows[0]["total"])
    assert float(rows[-1]["si_log"]) < 0.5 * float(rows[0]["si_log"])
    assert float(rows[-1]["ordinal"]) < float(rows[0]["ordinal"])


class ConstantDepth(nn.Module):
    """Predicts log depth 0 everywhere: its SI log RMSE is the spread of log gt depth."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.zeros(x.shape[0], 1, *x.shape[2:]) + 0 * self.unused


def test_depth_task_evaluate_matches_analytic_baseline(depth_root):
    from invrender_core.train.datasets import EvalViews

    task = depth_task(depth_root)
    metrics = task.evaluate(ConstantDepth())
    views = EvalViews(depth_root, "heldout")
    spread = np.mean([np.log(v["gt_depth"].astype(np.float64)).std() for v in views])
    assert metrics["eval_views"] == 3
    assert metrics["si_log_rmse_constant"] == pytest.approx(spread, rel=1e-9)
    assert metrics["si_log_rmse"] == pytest.approx(spread, rel=1e-9)
    assert DepthTask(depth_root, width=1 / 16, eval_data=None).evaluate(ConstantDepth()) != {}  # data's heldout
    no_heldout = DepthTask(depth_root, width=1 / 16, eval_data=depth_root / "scene_00000")
    assert no_heldout.evaluate(ConstantDepth()) == {}  # a folder without held-out scenes: evaluation skipped


def test_depth_task_checks_batch_and_crop(depth_root):
    task = depth_task(depth_root)
    with pytest.raises(ValueError, match="batch shapes"):
        task.compute_losses(task.model, {"image": torch.zeros(2, 3, 32, 32), "depth": torch.ones(2, 32, 32),
                                         "mask": torch.ones(2, 32, 32)})
    with pytest.raises(ValueError, match="multiples of 16"):
        DepthTask(depth_root, crop=(20, 32))


# ---------- DDP: two CPU processes with gloo ----------

DDP_SCRIPT = textwrap.dedent('''
    """Tiny DDP run: a conv net without batch statistics, so DDP must equal single-process training."""
    import os
    import sys

    import torch
    from torch import nn

    from invrender_core.train.trainer import Trainer, seed_everything


    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            x = torch.rand(3, 8, 8, generator=g)
            return {"x": x, "y": x.mean(0, keepdim=True) * 2 - x[1:2]}


    class TinyTask:
        def __init__(self):
            seed_everything(0)
            self.model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 1, 3, padding=1))

        def make_dataset(self):
            return Pairs()

        def compute_losses(self, model, batch):
            mse = (model(batch["x"]) - batch["y"]).pow(2).mean()
            return {"total": mse, "mse": mse}


    def main(out):
        task = TinyTask()
        Trainer(task, out, device="cpu", batch_size=8, lr=1e-2, steps=12, log_every=1, checkpoint_every=6,
                progress=False).fit()
        rank = int(os.environ.get("RANK", "0"))
        torch.save({k: v.clone() for k, v in task.model.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
        with open(os.path.join(out, f"threads{rank}.txt"), "w") as f:  # native threads still running after fit
            f.write("\\n".join(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")))


    if __name__ == "__main__":
        main(sys.argv[1])
''')


def test_ddp_gloo_two_processes_equals_single_process(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    # TMPDIR: torchrun's agent leaves a torchelastic_* folder in the temporary directory on every run.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    spec = importlib.util.spec_from_file_location("ddp_run", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(tmp_path / "single"))  # same global batches in one process

    for rank in (0, 1):  # the process group is really gone: no gloo thread left to abort the process at exit
        threads = (tmp_path / "ddp" / f"threads{rank}.txt").read_text().split()
        assert not [t for t in threads if "gloo" in t], threads
    r0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # DDP keeps the replicas identical
        torch.testing.assert_close(r0[k], single[k], rtol=1e-5, atol=1e-6)  # gradient mean over the same batch
    rows = read_log(tmp_path / "ddp" / "log.csv")  # written once, by rank 0, with losses averaged over ranks
    single_rows = read_log(tmp_path / "single" / "log.csv")
    assert len(rows) == 12
    np.testing.assert_allclose([float(r["total"]) for r in rows], [float(r["total"]) for r in single_rows],
                               rtol=1e-4)
    assert float(rows[-1]["total"]) < float(rows[0]["total"])
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2


# ---------- invrender train ----------

def make_parser():
    parser = argparse.ArgumentParser(prog="invrender")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_train_parser_and_run(depth_root, tmp_path):
    args = make_parser().parse_args(["train", "depth", "--data", str(depth_root), "--out", str(tmp_path / "cli"),
                                     "--steps", "2", "--batch-size", "4", "--width", "0.0625", "--device", "cpu",
                                     "--num-workers", "0", "--seed", "3"])
    assert (args.task, args.steps, args.batch_size, args.width, args.resume, args.amp) == ("depth", 2, 4, 0.0625,
                                                                                           False, False)
    summary = args.func(args)
    assert summary["completed"] and (tmp_path / "cli" / "model.safetensors").is_file()
    assert summary["config"]["seed"] == 3 and summary["config"]["lr"] == 1e-3
    # --resume on a finished run is a no-op that keeps the weights.
    again = make_parser().parse_args(["train", "depth", "--data", str(depth_root), "--out", str(tmp_path / "cli"),
                                      "--steps", "2", "--batch-size", "4", "--width", "0.0625", "--device", "cpu",
                                      "--num-workers", "0", "--seed", "3", "--resume"])
    assert again.func(again)["step"] == 2


def test_init_starts_any_task_from_given_weights(depth_root, tmp_path):
    from safetensors.torch import load_file, save_file

    from invrender_core.train.cli import build_task

    common = ["train", "depth", "--data", str(depth_root), "--out", str(tmp_path / "run"), "--width", "0.0625"]
    donor = build_task(make_parser().parse_args(common + ["--seed", "5"])).model.state_dict()
    weights = str(tmp_path / "donor.safetensors")
    save_file({k: v.contiguous() for k, v in donor.items()}, weights)
    fresh = build_task(make_parser().parse_args(common + ["--seed", "6"])).model.state_dict()
    started = build_task(make_parser().parse_args(common + ["--seed", "6", "--init", weights]))
    assert any(not torch.equal(donor[k], fresh[k]) for k in donor)  # the seed alone would give other weights
    for key, value in load_file(weights).items():
        assert torch.equal(started.model.state_dict()[key], value)
    wider = make_parser().parse_args(common[:-1] + ["0.125", "--init", weights])
    with pytest.raises(ValueError, match="does not fit the depth network .size mismatch"):  # strict: other widths
        build_task(wider)
    for bad, message in ((tmp_path, "is a folder"), (depth_root / "scene_0000" / "scene.json", "not a .safetensors")):
        with pytest.raises(ValueError, match=message):
            build_task(make_parser().parse_args(common + ["--init", str(bad)]))


def test_train_parser_errors(depth_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args(["train", "normals", "--data", "d", "--out", "o"])
    capsys.readouterr()
    args = make_parser().parse_args(["train", "depth", "--data", str(tmp_path / "none"), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="no dataset folder"):
        args.func(args)
    args = make_parser().parse_args(["train", "irn", "--data", str(depth_root), "--out", str(tmp_path / "irn"),
                                     "--steps", "1", "--device", "cpu"])
    if importlib.util.find_spec("invrender_core.train.irn_task") is None:
        with pytest.raises(ValueError, match="irn training task is not available"):
            args.func(args)


def test_run_folders_and_settings_that_cannot_work_are_refused_before_training(depth_root, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("the user's own log\n")
    common = ["train", "depth", "--data", str(depth_root), "--steps", "2", "--batch-size", "2", "--device", "cpu",
              "--width", "0.0625", "--crop", "32", "32"]
    cases = [(["--out", str(run)], "already holds a run's files .log.csv."),
             (["--out", str(depth_root / "runs")], "inside the dataset"),
             (["--out", str(tmp_path / "a"), "--eval-data", str(tmp_path)], "no held-out scenes"),
             (["--out", str(tmp_path / "b"), "--seed", "-1"], "--seed must be"),
             (["--out", str(tmp_path / "c"), "--grad-clip", "-1"], "grad_clip must be a number >= 0"),
             (["--out", str(tmp_path / "d"), "--lr", "inf"], "lr must be a positive number")]
    for extra, message in cases:
        args = make_parser().parse_args(common + extra)
        with pytest.raises(ValueError, match=message):
            args.func(args)
    assert (run / "log.csv").read_text() == "the user's own log\n" and not (depth_root / "runs").exists()

    # A damaged view is named, with what to do.
    damaged = tmp_path / "damaged"
    shutil.copytree(depth_root, damaged)
    view = sorted(damaged.glob("scene_00000/view_*.npz"))[0]
    view.write_bytes(view.read_bytes()[: view.stat().st_size // 2])
    args = make_parser().parse_args(common[:2] + ["--data", str(damaged), *common[4:], "--out", str(tmp_path / "e"),
                                                  "--batch-size", "8"])
    with pytest.raises(ValueError, match=f"{view.name} cannot be read .*render the scene again"):
        args.func(args)


def test_resuming_with_another_crop_or_width_is_refused(depth_root, tmp_path):
    kw = dict(device="cpu", batch_size=4, steps=2, seed=2, checkpoint_every=1, progress=False)
    Trainer(depth_task(depth_root, crop=(32, 32)), tmp_path / "run", **kw).fit(stop_at=1)
    with pytest.raises(ValueError, match=r"crop \(32, 32\) -> \(16, 16\)"):
        Trainer(depth_task(depth_root, crop=(16, 16)), tmp_path / "run", **kw).fit(resume=True)
    seed_everything(0)
    wider = DepthTask(depth_root, width=1 / 8, eval_views=3, num_pairs=64, crop=(32, 32))
    with pytest.raises(ValueError, match="model MegaDepthHourglass, [0-9]+ parameters -> MegaDepthHourglass"):
        Trainer(wider, tmp_path / "run", **kw).fit(resume=True)
    Trainer(depth_task(depth_root, crop=(32, 32)), tmp_path / "run", **kw).fit(resume=True)  # the same: resumes


def test_loss_weights_and_second_light_from_the_command_line(depth_root, tmp_path):
    from invrender_core.train.cli import build_task

    common = ["train", "irn", "--data", str(depth_root), "--out", str(tmp_path / "irn"), "--width", "0.0625"]
    task = build_task(make_parser().parse_args(common + ["--second-light", "0.5", "--loss-weight",
                                                         "shadow_sparsity=0.1", "--loss-weight", "rerender=2"]))
    assert task.second_light == 0.5
    assert (task.weights.shadow_sparsity, task.weights.rerender, task.weights.cross_render) == (0.1, 2.0, 1.0)
    for bad in ("shadow_sparsity", "shadow_sparsity=x", "=0.1"):
        with pytest.raises(ValueError, match="TERM=W"):
            build_task(make_parser().parse_args(common + ["--loss-weight", bad]))
    depth = ["train", "depth", "--data", str(depth_root), "--out", str(tmp_path / "d")]
    task = build_task(make_parser().parse_args(depth + ["--loss-weight", "sky=0.1", "--loss-weight", "ordinal=0"]))
    assert (task.grad_weight, task.ordinal_weight, task.sky_weight) == (0.5, 0.0, 0.1)
    with pytest.raises(ValueError, match=r"unknown loss terms \['rerender'\]"):
        build_task(make_parser().parse_args(depth + ["--loss-weight", "rerender=2"]))
    with pytest.raises(ValueError, match="loss weights must be >= 0"):
        build_task(make_parser().parse_args(depth + ["--loss-weight", "sky=-1"]))
    for task in ("shadow", "photo-shadow"):
        shadow = ["train", task, "--data", str(depth_root), "--out", str(tmp_path / "s")]
        assert build_task(make_parser().parse_args(shadow + ["--loss-weight", "iou=2"])).iou_weight == 2.0
        with pytest.raises(ValueError, match=r"unknown loss terms \['bce'\]"):
            build_task(make_parser().parse_args(shadow + ["--loss-weight", "bce=2"]))
        with pytest.raises(ValueError, match=r"loss weights must be >= 0, got \{'iou': -1.0\}"):
            build_task(make_parser().parse_args(shadow + ["--loss-weight", "iou=-1"]))
        with pytest.raises(ValueError, match="width must be a positive multiple of 4, got 16.5"):
            build_task(make_parser().parse_args(shadow + ["--width", "16.5"]))  # refused, not truncated
    relight = make_parser().parse_args(["train", "relight", "--data", str(depth_root), "--out", str(tmp_path / "r"),
                                        "--loss-weight", "rerender=2"])
    with pytest.raises(ValueError, match="does not take --loss-weight$"):
        build_task(relight)
