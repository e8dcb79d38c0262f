"""Process memory for the benchmarks (Linux /proc): current and peak resident set size of this process."""


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
