"""proxy.cancel: the keys pgtenant hands to clients map to the backend key serving them, and only the exact
secret finds it."""

from __future__ import annotations

from proxy.cancel import CancelRegistry, CancelTarget
from proxy.config import BackendConfig

MAIN = BackendConfig("main")


def test_the_registered_key_finds_its_backend_target() -> None:
    reg = CancelRegistry()
    target = CancelTarget(MAIN, 4242, b"srv1")
    reg.register(7, b"cli1", target)
    assert 7 in reg and 8 not in reg
    assert reg.lookup(7, b"cli1") is target


def test_a_wrong_or_partial_secret_or_unknown_process_finds_nothing() -> None:
    reg = CancelRegistry()
    reg.register(7, b"cli1", CancelTarget(MAIN, 4242, b"srv1"))
    assert reg.lookup(7, b"cli2") is None
    assert reg.lookup(7, b"cli") is None and reg.lookup(7, b"cli1\x00") is None
    assert reg.lookup(8, b"cli1") is None
    assert reg.lookup(7, b"srv1") is None  # the backend's own secret is not the client's


def test_registering_again_replaces_and_unregistering_forgets() -> None:
    reg = CancelRegistry()
    reg.register(7, b"old!", CancelTarget(MAIN, 1, b"a"))
    newer = CancelTarget(BackendConfig("other", port=5433), 2, b"b")
    reg.register(7, b"new!", newer)  # the same client now served by another backend connection
    assert reg.lookup(7, b"old!") is None and reg.lookup(7, b"new!") is newer
    reg.unregister(7)
    assert 7 not in reg and reg.lookup(7, b"new!") is None
    reg.unregister(7)  # unregistering twice is harmless
    assert 7 not in reg
