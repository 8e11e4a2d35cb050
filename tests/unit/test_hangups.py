"""SIGHUPs before the proxy serves are kept, not the default action (review 20 F12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from proxy import hangups


def test_a_sighup_is_kept_instead_of_ending_the_process() -> None:
    before = signal.getsignal(signal.SIGHUP)
    try:
        hangups.received.clear()
        hangups.keep()
        os.kill(os.getpid(), signal.SIGHUP)  # the default action would end this test process
        signal.getsignal(signal.SIGHUP)  # (Python runs the handler between bytecodes: by the next call)
        assert hangups.received == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, before)
        hangups.received.clear()


_EARLY = """
import importlib.abc, os, signal, sys

class Hangup(importlib.abc.MetaPathFinder):  # a SIGHUP as the command line's heavy imports begin
    def find_spec(self, name, path, target=None):
        if name == "proxy.config":
            os.kill(os.getpid(), signal.SIGHUP)
            signal.getsignal(signal.SIGHUP)  # (a kept one runs its handler by the next bytecodes)
        return None

sys.meta_path.insert(0, Hangup())
sys.argv = ["pgtenant", "run", "--config", "absent.toml"]
import proxy.cli
from proxy import hangups
print(hangups.received)
"""


def test_pgtenant_run_keeps_a_sighup_from_before_its_imports() -> None:
    """Review 20 F12: importing the command line (the config model, the policy: over a second) came before `run`
    kept SIGHUPs; one sent then ended the process (exit 129, nothing logged)."""
    done = subprocess.run([sys.executable, "-c", _EARLY], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.strip() == f"[{int(signal.SIGHUP)}]"
