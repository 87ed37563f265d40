"""Where a training step's time goes: torch.profiler over steps of the real training entry.

    python -m train.launchers.profile_steps --out PROFILE.json [--top 15] -- --config CONFIG [key=value ...]

Runs ``train.finetune.main`` in this process with the given arguments, profiling from
start-up: the first step is the profiler's warm-up (its records are dropped, with model
loading), the next ``--active`` steps are recorded, then the profiler stops, so
checkpointing and the end of the run are not in it. ``train.max_steps`` must be at least
``1 + --active``. Writes the ops with the most self CPU time as JSON: name, calls,
self CPU ms and share, total CPU ms. The evaluation benchmark (``python -m evaluation.bench
--profile``) runs it as its own process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, schedule

from train import finetune
from train.step import TrainingStep


def top_ops(profiler: profile, top: int) -> dict:
    """The ``top`` ops by self CPU time of the profiler's recorded steps, and the recorded total."""
    events = profiler.key_averages()
    total_us = sum(event.self_cpu_time_total for event in events)
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
    return {
        "self_cpu_total_ms": total_us / 1e3,
        "ops": [{"name": event.key, "calls": event.count, "self_cpu_ms": event.self_cpu_time_total / 1e3,
                 "self_cpu_share": event.self_cpu_time_total / total_us if total_us else 0.0,
                 "cpu_total_ms": event.cpu_time_total / 1e3} for event in ranked],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.launchers.profile_steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write the top ops to")
    parser.add_argument("--top", type=int, default=15, help="ops to keep, by self CPU time")
    parser.add_argument("--active", type=int, default=2, help="training steps recorded after the warm-up step")
    parser.add_argument("finetune_args", nargs=argparse.REMAINDER, help="-- then train/finetune.py's arguments")
    args = parser.parse_args(argv)
    finetune_args = args.finetune_args[1:] if args.finetune_args[:1] == ["--"] else args.finetune_args

    recorded: dict = {}
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=args.active, repeat=1),
                 on_trace_ready=lambda profiler: recorded.update(top_ops(profiler, args.top))) as profiler:
        # The loop calls the step once per optimizer step: advancing the profiler's schedule
        # after each call is the only hook the run needs, so finetune itself stays unaware.
        original_call = TrainingStep.__call__

        def call_and_advance(self, batches):
            result = original_call(self, batches)
            profiler.step()
            return result

        TrainingStep.__call__ = call_and_advance
        try:
            finetune.main(finetune_args)
        finally:
            TrainingStep.__call__ = original_call
    if not recorded:
        raise SystemExit(f"profile_steps: no step was recorded; train.max_steps must be at least {1 + args.active}")
    recorded["active_steps"] = args.active
    Path(args.out).write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
    return recorded


if __name__ == "__main__":
    main()
