"""A process's peak resident memory (VmHWM) read and restarted through /proc, for memory-bound tests."""

from __future__ import annotations


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:  # (5: the peak RSS, VmHWM, starts again from the RSS)
        f.write("5")


def peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
