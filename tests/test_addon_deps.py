"""The add-on's bpy-free PyTorch helpers: the pinned pip command, the folder on sys.path, the status, pip runs.

Nothing is downloaded: pip runs are played by small Python scripts.
"""

import importlib
import json
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from invrender_addon import deps

ROOT = Path(__file__).resolve().parents[1]


def test_torch_pin_is_the_projects():
    pins = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if d.startswith("torch")]
    assert pins == [f"torch=={deps.TORCH_VERSION}"]


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_pip_command_installs_the_pinned_torch_into_the_folder(tmp_path, variant):
    target = tmp_path / "user folder" / "site-packages"
    cmd = deps.pip_install_command(target, variant, python="/blender/python", platform="linux")
    assert cmd[:4] == ["/blender/python", "-m", "pip", "install"]
    assert cmd[cmd.index("--target") + 1] == str(target)
    assert cmd[cmd.index("--index-url") + 1] == {"cpu": "https://download.pytorch.org/whl/cpu",
                                                 "cuda": "https://download.pytorch.org/whl/cu130"}[variant]
    assert cmd[-1] == f"torch=={deps.TORCH_VERSION}"
    assert {"--upgrade", "--only-binary=:all:", "--no-input"} <= set(cmd)
    assert not any(a.startswith("--user") for a in cmd)
    # The command shown for a manual install is the same command, quoted for a shell.
    assert shlex.split(deps.command_text(cmd, platform="linux")) == cmd
    assert deps.command_text(cmd, platform="win32") == subprocess.list2cmdline(cmd)
    assert f'"{target}"' in deps.command_text(cmd, platform="win32")  # the space in the folder is quoted


def test_pip_command_refuses_unknown_builds_and_cuda_on_macos(tmp_path):
    assert deps.pip_install_command(tmp_path, "cpu", platform="darwin")[-1] == f"torch=={deps.TORCH_VERSION}"
    with pytest.raises(ValueError, match="no CUDA build for macOS"):
        deps.pip_install_command(tmp_path, "cuda", platform="darwin")
    with pytest.raises(ValueError, match="cpu, cuda"):
        deps.pip_install_command(tmp_path, "rocm")


def test_sys_path_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "site-packages"
    assert not deps.add_to_sys_path(folder)  # absent: nothing added
    assert str(folder) not in sys.path
    folder.mkdir()
    (folder / "invr_round_trip_mod.py").write_text("VALUE = 7\n")
    assert deps.add_to_sys_path(folder)
    assert not deps.add_to_sys_path(folder)  # once only
    assert sys.path.count(str(folder)) == 1 and sys.path[-1] == str(folder)  # after Blender's own modules
    assert importlib.import_module("invr_round_trip_mod").VALUE == 7
    del sys.modules["invr_round_trip_mod"]
    assert deps.remove_from_sys_path(folder)
    assert str(folder) not in sys.path
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("invr_round_trip_mod")
    assert not deps.remove_from_sys_path(folder)


def test_a_folder_put_on_sys_path_by_someone_else_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    assert not deps.add_to_sys_path(tmp_path)
    assert not deps.remove_from_sys_path(tmp_path)
    assert str(tmp_path) in sys.path


STATUS_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("deps", sys.argv[1])
    deps = sys.modules["deps"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deps)
    before = deps.torch_status(load=True)
    added = deps.add_to_sys_path(sys.argv[2])
    lazy = deps.torch_status()
    loaded = deps.torch_status(load=True)
    print(json.dumps({"before": before.lines(), "added": added, "lazy": lazy.lines(), "loaded": loaded.lines(),
                      "location": loaded.location, "file": sys.modules["torch"].__file__}))
""")


def test_status_finds_a_torch_installed_into_the_folder(tmp_path):
    """In a Python without torch (-S: no site-packages), a torch put into the install folder is found once the
    folder is on sys.path: its version from its metadata, then CUDA and MPS from the module."""
    folder = tmp_path / "site-packages"
    (folder / "torch" / "backends" / "mps").mkdir(parents=True)
    (folder / "torch" / "__init__.py").write_text(textwrap.dedent("""
        __version__ = "9.9.9+cpu"
        from . import backends, cuda
    """))
    (folder / "torch" / "cuda.py").write_text("def is_available():\n    return False\n")
    (folder / "torch" / "backends" / "__init__.py").write_text("from . import mps\n")
    (folder / "torch" / "backends" / "mps" / "__init__.py").write_text("def is_available():\n    return True\n")
    (folder / "torch-9.9.9+cpu.dist-info").mkdir()
    (folder / "torch-9.9.9+cpu.dist-info" / "METADATA").write_text("Name: torch\nVersion: 9.9.9+cpu\n")
    script = tmp_path / "status.py"
    script.write_text(STATUS_SCRIPT)
    out = subprocess.run([sys.executable, "-S", str(script), str(ROOT / "addon" / "deps.py"), str(folder)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["before"] == ["PyTorch: not installed (the networks need it)"]
    assert result["added"]
    assert result["lazy"] == ["PyTorch 9.9.9+cpu", "CUDA / Apple MPS: checked when PyTorch first loads"]
    assert result["loaded"] == ["PyTorch 9.9.9+cpu", "CUDA: not available", "Apple MPS: available"]
    assert Path(result["location"]) == folder and Path(result["file"]).parent == folder / "torch"


def test_status_of_this_environments_torch():
    import torch

    status = deps.torch_status(load=True)
    assert status.loaded and status.version == torch.__version__
    assert status.mps == torch.backends.mps.is_available()
    assert bool(status.cuda) == torch.cuda.is_available()


def _fake_pip(tmp_path, body: str) -> list[str]:
    script = tmp_path / "fake_pip.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_pip_run_collects_lines_and_reports_the_last_one(tmp_path):
    run = deps.PipRun(_fake_pip(tmp_path, """
        import sys
        print("Looking in indexes: https://download.pytorch.org/whl/cpu", flush=True)
        print("ERROR: Could not find a version that satisfies the requirement torch==2.13.0", file=sys.stderr)
        sys.exit(1)
    """))
    seen = []
    assert run.wait(timeout=60, on_line=seen.append) == 1
    assert seen == run.lines == ["Looking in indexes: https://download.pytorch.org/whl/cpu",
                                 "ERROR: Could not find a version that satisfies the requirement torch==2.13.0"]
    assert run.error_message() == ("pip failed (exit code 1): ERROR: Could not find a version that satisfies the "
                                   "requirement torch==2.13.0")


def test_pip_run_success_and_polling(tmp_path):
    marker = tmp_path / "installed"
    run = deps.PipRun(_fake_pip(tmp_path, f"""
        from pathlib import Path
        for i in range(3):
            print("Collecting", i, flush=True)
        Path({str(marker)!r}).write_text("torch")
        print("Successfully installed torch-2.13.0")
    """))
    codes = []
    while (code := run.poll()) is None:
        codes.append(code)
    assert code == 0 and run.poll() == 0 and marker.read_text() == "torch"
    assert run.lines == ["Collecting 0", "Collecting 1", "Collecting 2", "Successfully installed torch-2.13.0"]
    assert run.last_line == "Successfully installed torch-2.13.0"


def test_pip_run_timeout_and_cancel_stop_the_child(tmp_path):
    run = deps.PipRun(_fake_pip(tmp_path, """
        import time
        print("Downloading torch", flush=True)
        time.sleep(120)
    """))
    with pytest.raises(TimeoutError, match="Downloading torch"):
        run.wait(timeout=2)
    assert run.returncode is not None and run.returncode != 0
    assert run._process.poll() is not None  # the child is gone

    run = deps.PipRun(_fake_pip(tmp_path, "import time\ntime.sleep(120)\n"))
    run.cancel()
    assert run.poll() is not None and run.error_message() == f"pip failed (exit code {run.returncode}): no output"
