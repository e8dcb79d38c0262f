"""PyTorch for the add-on, without bpy: the pinned pip command, the install folder on sys.path, the status text.

Blender ships numpy but not PyTorch, and PyTorch is too large (and too platform-specific: CPU or CUDA) to bundle
in the extension zip. The add-on installs it on request with pip, run by Blender's own Python, into a folder of
the extension's user data; that folder joins sys.path when the add-on is enabled. Everything here is plain Python
so that it is unit-tested outside Blender (tests/test_addon_deps.py).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# The one place that names the PyTorch build the add-on installs: the same pin as pyproject.toml (a test checks).
TORCH_VERSION = "2.13.0"
TORCH_INDEX_URLS = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    # PyTorch 2.13's Linux wheels on PyPI depend on CUDA 13.0 (nvidia-*-cu13): the same build, Windows included.
    "cuda": "https://download.pytorch.org/whl/cu130",
}
VARIANTS = tuple(TORCH_INDEX_URLS)
PIP_TIMEOUT_S = 60  # per network request: an unreachable index fails instead of hanging
INSTALL_TIMEOUT_S = 3600  # the whole synchronous install (the CUDA build is several GB)


def pip_install_command(target: Path, variant: str, python: str | None = None,
                        platform: str | None = None) -> list[str]:
    """The pip command line that installs the pinned PyTorch (`variant` "cpu" or "cuda") into folder `target`.

    `python` defaults to the running interpreter (Blender's Python inside Blender), `platform` to sys.platform.
    Raises ValueError for an unknown variant, or CUDA on macOS (PyTorch has no CUDA build there; the CPU build
    uses Apple's GPU through MPS).
    """
    platform = sys.platform if platform is None else platform
    if variant not in TORCH_INDEX_URLS:
        raise ValueError(f"unknown PyTorch build {variant!r}: use one of {', '.join(VARIANTS)}")
    if variant == "cuda" and platform == "darwin":
        raise ValueError("PyTorch has no CUDA build for macOS: install the CPU build (it uses Apple MPS)")
    return [python or sys.executable, "-m", "pip", "install",
            "--target", str(target), "--upgrade",  # --upgrade: replace an earlier install (CPU <-> CUDA)
            "--only-binary=:all:", "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
            "--timeout", str(PIP_TIMEOUT_S),
            "--index-url", TORCH_INDEX_URLS[variant], f"torch=={TORCH_VERSION}"]


def command_text(command: list[str], platform: str | None = None) -> str:
    """`command` as one line to paste into a terminal (cmd.exe quoting on Windows, POSIX shell elsewhere)."""
    if (sys.platform if platform is None else platform) == "win32":
        return subprocess.list2cmdline(command)
    return shlex.join(command)


def pip_available() -> bool:
    """Whether the running Python can run `-m pip` (some Linux distributions' Blender packages lack it)."""
    return importlib.util.find_spec("pip") is not None


# --- the install folder on sys.path -------------------------------------------------------------------------

_added_paths: list[str] = []  # the folders this module put on sys.path, so that removing is symmetric


def add_to_sys_path(folder: Path) -> bool:
    """Append `folder` to sys.path when it exists and is not there yet; True when it was added.

    Appended, not prepended: what PyTorch's installation brought along never shadows Blender's own modules.
    """
    path = str(folder)
    if not Path(folder).is_dir() or path in sys.path:
        return False
    sys.path.append(path)
    _added_paths.append(path)
    importlib.invalidate_caches()  # the folder may have been filled since the import system last looked
    forget_torch_status()
    return True


def remove_from_sys_path(folder: Path) -> bool:
    """Undo `add_to_sys_path(folder)`; True when it was removed. A folder someone else put there stays."""
    path = str(folder)
    if path not in _added_paths:
        return False
    _added_paths.remove(path)
    if path in sys.path:
        sys.path.remove(path)
    forget_torch_status()
    return True


# --- PyTorch status -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TorchStatus:
    """What the panels say about PyTorch.

    version: the installed version ("2.13.0+cpu"), None when PyTorch is not installed.
    location: the folder it is installed in. loaded: torch is imported (accelerators are known only then).
    cuda: the CUDA device's name, "" when CUDA is not available, None when not known. mps: Apple MPS available
    (None when not known). error: why an installed PyTorch failed to import.
    """

    version: str | None = None
    location: str | None = None
    loaded: bool = False
    cuda: str | None = None
    mps: bool | None = None
    error: str | None = None

    def lines(self) -> list[str]:
        if self.version is None:
            return ["PyTorch: not installed (the networks need it)"]
        if self.error is not None:
            return [f"PyTorch {self.version} fails to load: {self.error}"]
        if not self.loaded:
            return [f"PyTorch {self.version}", "CUDA / Apple MPS: checked when PyTorch first loads"]
        return [f"PyTorch {self.version}",
                f"CUDA: {self.cuda}" if self.cuda else "CUDA: not available",
                "Apple MPS: available" if self.mps else "Apple MPS: not available"]


_status_cache: dict[tuple, TorchStatus] = {}


def forget_torch_status() -> None:
    """Drop the cached status (after a change of sys.path)."""
    _status_cache.clear()


def refresh() -> None:
    """After an install into a folder already on sys.path: make the import system and the status look again."""
    importlib.invalidate_caches()
    forget_torch_status()


def torch_status(load: bool = False) -> TorchStatus:
    """PyTorch's version and accelerators, from its installed metadata and, once imported, from torch itself.

    load: import torch to learn about CUDA and MPS when it is installed but not imported yet (takes seconds, once).
    Cached: the panels call this on every redraw.
    """
    key = (tuple(sys.path), "torch" in sys.modules, load)
    if key not in _status_cache:
        _status_cache[key] = _torch_status(load)
    return _status_cache[key]


def _torch_status(load: bool) -> TorchStatus:
    try:
        dist = importlib.metadata.distribution("torch")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    version = dist.version if dist is not None else None
    location = str(dist.locate_file("")) if dist is not None else None
    if "torch" not in sys.modules and not (load and version is not None):
        return TorchStatus(version=version, location=location)
    try:
        import torch
    except (ImportError, OSError, RuntimeError) as e:  # shown to the user, who can reinstall
        return TorchStatus(version=version, location=location, error=str(e).splitlines()[0] if str(e) else repr(e))
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    return TorchStatus(version=str(getattr(torch, "__version__", version)), location=location, loaded=True,
                       cuda=cuda, mps=mps)


# --- pip as a child process ---------------------------------------------------------------------------------

class PipRun:
    """A pip command run as a child process; a reader thread collects its output lines.

    The caller polls (`poll()` from a timer in Blender's UI) or blocks (`wait()` in background mode). The child
    never touches Blender: it only writes the install folder.
    """

    def __init__(self, command: list[str]):
        self.command = list(command)
        self.lines: list[str] = []
        self.returncode: int | None = None
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        env = dict(os.environ, PYTHONNOUSERSITE="1", PYTHONIOENCODING="utf-8")  # no user-site packages in pip
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0  # no console window flashing up
        self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                                         env=env, creationflags=flags)
        self._reader = threading.Thread(target=self._read, name="invrender-pip", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._process.stdout:
            self._queue.put(line.rstrip())
        self._process.stdout.close()

    def poll(self) -> int | None:
        """Collect the output lines printed so far; pip's exit code once it ended and all is read, else None."""
        if self.returncode is not None:
            return self.returncode
        ended = not self._reader.is_alive()  # checked before draining: nothing arrives after the reader ended
        while True:
            try:
                self.lines.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if ended:
            self.returncode = self._process.wait()
        return self.returncode

    def wait(self, timeout: float = INSTALL_TIMEOUT_S, on_line=None) -> int:
        """Block until pip ends; `on_line(text)` sees each output line. TimeoutError (pip stopped) after `timeout`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            code = self.poll()
            if on_line is not None:
                for line in self.lines[seen:]:
                    on_line(line)
            seen = len(self.lines)
            if code is not None:
                return code
            if time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"pip did not finish in {timeout:.0f} s and was stopped: {self.last_line}")
            time.sleep(0.05)

    def cancel(self) -> None:
        """Stop pip (and wait for it): pip --target moves files into place only at its end."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(5)
        self.poll()

    @property
    def last_line(self) -> str:
        """pip's last non-empty output line ("" before it printed anything)."""
        return next((line.strip() for line in reversed(self.lines) if line.strip()), "")

    def error_message(self) -> str:
        """One line for a failed run: the exit code and pip's last line (its error)."""
        return f"pip failed (exit code {self.returncode}): {self.last_line or 'no output'}"
