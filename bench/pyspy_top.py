"""The top entries of a py-spy raw profile (``bench/profiles.py --py-spy FILE`` writes one).

Run: .venv/bin/python bench/pyspy_top.py FILE [FILE ...] [--top N]

Prints, per file, the functions with the most samples of their own (the frame on top of the
stack) and the most samples under them (anywhere on the stack), as shares of all samples:
the same two views as cProfile's tottime and cumtime, from a sampler that does not slow the
operator down as a tracing profiler would.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

#: Frames every sample of a thread passes through: left out of the "under" column.
ENTRY_POINTS = (
    "<module> ",
    "main (agentdetect/app/cli.py)",
    "_cmd_run ",
    "run (asyncio/",
    "Runner.",
    "BaseEventLoop.",
    "Handle._run ",
    "Thread.",
    "_worker (concurrent/",
    "_WorkItem.run ",
)


def frame_name(frame: str) -> str:
    """``func (path/to/mod.py:123)`` without the line: one entry per function."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else func


def tally(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total, own, under = 0, Counter[str](), Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")[1:]]  # the first is the thread
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            under[name] += n
    return total, own, under


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for path in args.files:
        total, own, under = tally(path)
        print(f"\n{path}: {total:,} samples\n")
        print("| own | function | | under | function |\n|---|---|---|---|---|")
        cumulative = [(k, v) for k, v in under.most_common() if not k.startswith(ENTRY_POINTS)]
        rows = zip(own.most_common(args.top), cumulative[: args.top], strict=False)
        for (o_name, o_n), (u_name, u_n) in rows:
            print(f"| {o_n / total:.1%} | `{o_name}` | | {u_n / total:.1%} | `{u_name}` |")


if __name__ == "__main__":
    main()
