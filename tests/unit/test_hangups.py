"""SIGHUPs before the proxy serves are kept, not the default action (review 20 F12)."""

from __future__ import annotations

import os
import signal

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
