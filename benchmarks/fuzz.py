#!/usr/bin/env python3
"""Long-mode fuzzing: the suite's fuzz targets (tests/support/fuzzing.py) for millions of seeded inputs.

Run from the repo root:  .venv/bin/python benchmarks/fuzz.py [--inputs 1000000] [--seed 17] [--json out.json]

Inputs go round robin to the codec (every decoder), the framing (random splits), a client session after
login and one before it (random splits, backend bytes too): half raw random bytes, half valid messages
mutated (flips, inserts, deletes, truncations, corrupted length words, splices). A crash is any exception
a target may not raise; it is counted with its input (hex) in the report. Distinct error classes are the
distinct refusals seen (DecodeError / FramingError messages with numbers as N, a session's close SQLSTATE and
reason).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy import _accel  # noqa: E402
from tests.support import fuzzing as fz  # noqa: E402

_DIGITS = re.compile(r"\d+")


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def one_input(rng: random.Random, startup: bool) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(rng.randint(0, 300))
    seeds = fz.STARTUP_SEEDS if startup else fz.SEEDS
    base = b"".join(rng.choice(seeds) for _ in range(1 if startup else rng.randint(1, 6)))
    return fz.mutate(rng, base)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    fz.config()  # built before the first RSS reading
    targets = ("codec", "framing", "session_ready", "session_startup")
    classes: dict[str, Counter[str]] = {t: Counter() for t in targets}
    crashes: list[dict[str, str]] = []
    crash_count = 0
    rss_before = rss_kb()
    started = time.monotonic()
    for i in range(args.inputs):
        target = targets[i % len(targets)]
        data = one_input(rng, target == "session_startup")
        try:
            if target == "codec":
                found = fz.codec(data)
            elif target == "framing":
                found = fz.framing(data, fz.chunks(rng, data))
            else:
                backend = rng.randbytes(rng.randint(0, 64)) if target == "session_ready" else b""
                found = fz.session(data, fz.chunks(rng, data), ready=target == "session_ready", backend=backend)
        except Exception as exc:  # a crash: anything a target may not raise
            crash_count += 1
            if len(crashes) < 20:
                crashes.append({"target": target, "input": data.hex(), "error": repr(exc),
                                "traceback": traceback.format_exc(limit=6)})
            continue
        classes[target].update(c if c.startswith("close") else _DIGITS.sub("N", c) for c in found)  # length N
        if (i + 1) % 100_000 == 0:
            print(f"{i + 1} inputs, {crash_count} crashes, {time.monotonic() - started:.0f} s, "
                  f"RSS {rss_kb() / 1024:.1f} MB", file=sys.stderr)
    elapsed = time.monotonic() - started
    rss_after = rss_kb()
    result = {
        "inputs": args.inputs, "seed": args.seed, "seconds": round(elapsed, 1), "crashes": crash_count,
        "crash_samples": crashes, "rss_kb_before": rss_before, "rss_kb_after": rss_after,
        "build": sorted(set(_accel.status().values())),
        "error_classes": {t: dict(c.most_common()) for t, c in classes.items()},
    }
    distinct = sum(len(c) for c in classes.values())
    print(f"\n{args.inputs} inputs (seed {args.seed}, {', '.join(result['build'])}) in {elapsed:.0f} s: "
          f"{crash_count} crashes, {distinct} distinct error classes, "
          f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MB\n")
    print("| target | distinct error classes | most frequent |")
    print("|---|---:|---|")
    for t, c in classes.items():
        top = "; ".join(f"{k} ({v})" for k, v in c.most_common(3))
        print(f"| {t} | {len(c)} | {top} |")
    for crash in crashes[:5]:
        print(f"\nCRASH in {crash['target']}: {crash['error']}\ninput {crash['input'][:200]}\n{crash['traceback']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if crash_count else 0


if __name__ == "__main__":
    raise SystemExit(main())
