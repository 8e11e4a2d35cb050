"""Memory probe for benchmarks/idle_memory.py: with PGTENANT_MEMPROBE=<path> set, a process that imports this
(its directory first on PYTHONPATH) watches for `<path>.go`: each time it appears, it writes a tracemalloc snapshot
to `<path>.<n>` and object counts per type to `<path>.<n>.types`, then removes `<path>.go`. Tracing starts at the
first one (tracing from the start makes the proxy too slow to start): later snapshots hold what was allocated
since and is still alive."""

from __future__ import annotations

import os

_PATH = os.environ.get("PGTENANT_MEMPROBE")


def _watch(path: str) -> None:
    import collections
    import gc
    import json
    import time
    import tracemalloc

    n = 0
    while True:
        time.sleep(0.1)
        if not os.path.exists(path + ".go"):
            continue
        gc.collect()
        if not tracemalloc.is_tracing():
            tracemalloc.start(int(os.environ.get("PGTENANT_MEMPROBE_FRAMES", "8")))
        tracemalloc.take_snapshot().dump(f"{path}.{n}")
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        with open(f"{path}.{n}.types", "w") as f:
            json.dump(counts, f)
        n += 1
        os.unlink(path + ".go")


if _PATH:
    import threading

    threading.Thread(target=_watch, args=(_PATH,), daemon=True, name="memprobe").start()
