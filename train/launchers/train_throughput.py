"""Training step throughput and peak memory at several global batch sizes, GradCache on.

    python -m train.launchers.train_throughput --batches 16,256 --chunk-size 16 --steps 3

Each setting is a fresh `train/finetune.py` process on the given config (dev evaluation,
checkpoints and export off), so peak memory is that run's own. Throughput averages the
steps after the first (warm-up); memory is the process peak (RSS on CPU, allocated GPU
memory on CUDA) as the run logs it. With GradCache, memory should stay near one chunk's
activations whatever the batch, while time grows with the batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from train.config import load_config

FINETUNE = Path(__file__).resolve().parents[1] / "finetune.py"


def run_setting(config: str, batch_size: int, chunk_size: int, steps: int, extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as output_dir:
        command = [sys.executable, str(FINETUNE), "--config", config, f"output_dir={output_dir}",
                   f"train.max_steps={steps}", f"train.batch_size={batch_size}", f"train.chunk_size={chunk_size}",
                   "train.warmup_steps=0", "train.save_every=null", "data.dev=null", "export.enabled=false",
                   "wandb.mode=disabled", *extra]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]
    timed = [r for r in records if "train/tokens_per_s" in r and r["step"] > 1] or [r for r in records if "train/tokens_per_s" in r]
    return {
        "tokens_per_s": sum(r["train/tokens_per_s"] for r in timed) / len(timed),
        "examples_per_s": sum(r["train/examples_per_s"] for r in timed) / len(timed),
        "peak_memory_gb": max(r["train/peak_memory_gb"] for r in records if "train/peak_memory_gb" in r),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.launchers.train_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/echo_lora.yaml")
    parser.add_argument("--batches", default="16,256", help="global contrastive batch sizes (queries)")
    parser.add_argument("--chunk-size", type=int, default=16, help="GradCache chunk (sequences per forward)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    args = parser.parse_args(argv)
    print(f"config={args.config} chunk_size={args.chunk_size} steps={args.steps} overrides={args.overrides}")
    print("| global batch | sequences/step | step seconds | examples/s | tokens/s | peak memory GB |\n|---|---|---|---|---|---|")
    for batch in (int(value) for value in args.batches.split(",")):
        result = run_setting(args.config, batch, args.chunk_size, args.steps, args.overrides)
        sequences = batch * (2 + load_config(args.config, args.overrides).data.num_negatives)
        print(f"| {batch} | {sequences} | {batch / result['examples_per_s']:.1f} | {result['examples_per_s']:.2f} | "
              f"{result['tokens_per_s']:.0f} | {result['peak_memory_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
