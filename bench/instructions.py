"""Instructions per event under callgrind: a figure the machine's load does not move.

Run: .venv/bin/python bench/instructions.py [--lines N] [--full-parent]

bench/events.py times the pipeline against orjson on a shared 2-core machine, where a pass
of either can be off by a fifth. ``valgrind --tool=callgrind`` counts the instructions a
process executes instead, the same for the same code and input whatever else runs. Each
figure is one process run twice, with one and with three passes over the same lines after a
first pass that creates the (profile, pod) entries; the difference over two passes' events
is the cost of one event in the steady state, start-up and line generation cancelled out.
Instructions are not time (a cache miss costs hundreds of cycles, orjson's SIMD code retires
several instructions a cycle): read them beside bench/events.py, not instead of it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

from agentdetect.detection.aggregate import Aggregator
from agentdetect.detection.pipeline import Pipeline, tune_gc
from agentdetect.local.samples import stream
from bench.events import board_and_scenarios, decode_all, parse_all

WHAT = ("pipeline", "orjson", "decode")


def inner(what: str, passes: int, lines: int, full_parent: bool) -> None:
    board, scenarios = board_and_scenarios([f"team-{i}" for i in range(10)])
    pool = list(stream(scenarios, 500, lines, full_parent=full_parent))
    tune_gc()
    pipeline = Pipeline(board, Aggregator(max_pods=20_000))
    pipeline.feed_many(pool)
    for _ in range(passes):
        if what == "pipeline":
            pipeline.feed_many(pool)
        elif what == "orjson":
            parse_all(pool)
        else:
            decode_all(pool)


def collected(what: str, passes: int, lines: int, full_parent: bool) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    command += [__file__, "--inner", what, "--passes", str(passes), "--lines", str(lines)]
    command += ["--full-parent"] if full_parent else []
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no total:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=30_000)
    parser.add_argument("--full-parent", action="store_true")
    parser.add_argument("--inner", choices=WHAT, help=argparse.SUPPRESS)
    parser.add_argument("--passes", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, args.passes, args.lines, args.full_parent)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (Debian: apt-get install valgrind)")
    per_event = {}
    for what in WHAT:
        one = collected(what, 1, args.lines, args.full_parent)
        three = collected(what, 3, args.lines, args.full_parent)
        per_event[what] = (three - one) / (2 * args.lines)
    shape = "full" if args.full_parent else "short"
    print(f"instructions per event, {shape}-parent lines, {args.lines:,} lines per pass\n")
    print("| measure | instructions | goal |")
    print("|---|---|---|")
    print(f"| events through parse, match and aggregate | {per_event['pipeline']:,.0f} | |")
    print(f"| lines merely parsed with orjson (the floor) | {per_event['orjson']:,.0f} | |")
    print(f"| lines through the typed decode alone | {per_event['decode']:,.0f} | |")
    print(f"| orjson / pipeline | {per_event['orjson'] / per_event['pipeline']:.2f} | >= 1.0 |")


if __name__ == "__main__":
    main()
