"""proxy.cancel: the keys pgtenant hands to clients map to the sessions they were given to, and only the exact
secret finds one."""

from __future__ import annotations

from proxy.cancel import CancelRegistry


class Session:
    """A session the registry points at (the I/O layer's ClientConnection)."""


def test_the_registered_key_finds_its_session() -> None:
    reg = CancelRegistry()
    target = Session()
    reg.register(7, b"cli1", target)
    assert 7 in reg and 8 not in reg
    assert reg.lookup(7, b"cli1") is target


def test_a_wrong_or_partial_secret_or_unknown_process_finds_nothing() -> None:
    reg = CancelRegistry()
    reg.register(7, b"cli1", Session())
    assert reg.lookup(7, b"cli2") is None
    assert reg.lookup(7, b"cli") is None and reg.lookup(7, b"cli1\x00") is None
    assert reg.lookup(8, b"cli1") is None


def test_registering_again_replaces_and_unregistering_forgets() -> None:
    reg = CancelRegistry()
    reg.register(7, b"old!", Session())
    newer = Session()
    reg.register(7, b"new!", newer)  # the same key given anew
    assert reg.lookup(7, b"old!") is None and reg.lookup(7, b"new!") is newer
    reg.unregister(7)
    assert 7 not in reg and reg.lookup(7, b"new!") is None
    reg.unregister(7)  # unregistering twice is harmless
    assert 7 not in reg
