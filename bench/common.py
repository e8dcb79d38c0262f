"""What the benchmarks share: process memory (Linux /proc), the machine's description, child runs."""

import json
import os
import platform
import subprocess
import sys


def status_mb(key: str) -> float:
    """A /proc/self/status size field ("VmRSS", "VmHWM" = peak RSS, ...) in MB; NaN where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine() -> dict:
    """CPU model and count, load average now, Python and numpy versions (benchmarks add their libraries)."""
    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
            "numpy": numpy.__version__}


def run_child(script: str, args: list[str], timeout: float):
    """Run `script --child ARGS` in a fresh Python and return the JSON of its last stdout line; None on timeout."""
    try:
        result = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True,
                                timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"child {args} failed:\n{e.stderr}") from e
    return json.loads(result.stdout.strip().splitlines()[-1])
