"""Two or more versions of the detection pipeline against orjson, in one process, in turns.

Run: .venv/bin/python bench/events_ab.py OPERATOR_DIR [OPERATOR_DIR ...] [--pods N] [--rounds N]
     [--full-parent]

Each OPERATOR_DIR holds an ``agentdetect`` package (``operator/`` of a checkout; another
commit's with ``git archive REV operator | tar -x -C DIR``). bench/events.py compares one
version with orjson; between two of its runs this shared 2-core machine moves a ratio by
several percent, more than most single changes are worth. Here every version's Pipeline is
loaded side by side, fed the same 200,000-line pool first (the entries exist: the steady
state), then each 20,000-line slice goes through orjson and each version in turn, so a
difference of a percent or two shows. A version taking its turn later in a slice has been
measured a point or two faster than in the first turn: swap the order and run again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def load(operator_dir: str) -> tuple[Any, Any]:
    """One version's Pipeline class and a Pipeline over the benchmark's ten profiles: its
    modules are imported afresh from ``operator_dir``, then left out of sys.modules so that
    the next version's imports do not find them."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("agentdetect", "bench")]:
        del sys.modules[name]
    sys.path.insert(0, operator_dir)
    try:
        from agentdetect.detection.aggregate import Aggregator
        from agentdetect.detection.pipeline import Pipeline
        from bench.events import board_and_scenarios

        board, scenarios = board_and_scenarios([f"team-{i}" for i in range(10)])
        return Pipeline(board, Aggregator(max_pods=20_000)), scenarios
    finally:
        sys.path.remove(operator_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("operator_dirs", nargs="+")
    parser.add_argument("--pods", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full-parent", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    pipelines = {}
    scenarios: Any = None
    for directory in args.operator_dirs:
        pipelines[directory], scenarios = load(str(Path(directory).resolve()))
    from agentdetect.detection.pipeline import tune_gc
    from agentdetect.local.samples import stream

    pool = list(stream(scenarios, args.pods // 10, 200_000, full_parent=args.full_parent))
    tune_gc()
    for pipeline in pipelines.values():
        pipeline.feed_many(pool)
    from bench.events import SLICE, parse_all, take_turns

    sides = {"orjson": parse_all, **{name: pipeline.feed_many for name, pipeline in pipelines.items()}}
    spent: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        took = dict.fromkeys(sides, 0.0)
        for at in range(0, len(pool), SLICE):
            take_turns(pool[at : at + SLICE], sides, took)
        for name, total in took.items():
            spent[name].append(total)
    shape = "full" if args.full_parent else "short"
    print(f"{shape}-parent lines, {args.pods:,} pods, {args.rounds} rounds of {len(pool):,} lines\n")
    print("| version | lines/s (median round) | its rate / orjson's, median round (range) |")
    print("|---|---|---|")
    for name, rounds in spent.items():
        ratios = [o / s for o, s in zip(spent["orjson"], rounds, strict=True)]
        print(
            f"| {name} | {len(pool) / statistics.median(rounds):,.0f} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
        )


if __name__ == "__main__":
    main()
