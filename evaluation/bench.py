"""This project against sentence-transformers, side by side in one run: training, memory, encoding.

    python -m evaluation.bench --json OUT.json [--report OUT.md] [--quick] [--profile]
    python -m evaluation.bench --plan CONFIG --gpus N --gpu-peak-tflops X [--mfu M]

Both sides train ``smollm2-135m-instruct`` on the same fixed rows of the default training
mix (query, positive, one hard negative; :mod:`evaluation.benchmarks.workload`) with the
same global batch, LoRA (every linear layer of every decoder layer, r=16, alpha 32, no
dropout as in the paper's recipe: a dropout mask over every LoRA input costs a fifth of a
CPU step), text cap (128 text tokens: this project's ``model.max_length`` is set per
template set to leave exactly that per text copy), bf16 and mean pooling:

* this project runs its real training entry, ``train/finetune.py``, with a config laid
  over ``configs/echo_lora.yaml`` (``base:``) and reads back its ``log.jsonl``;
* sentence-transformers runs ``SentenceTransformerTrainer`` with
  ``MultipleNegativesRankingLoss``, or ``CachedMultipleNegativesRankingLoss`` against this
  project's GradCache (:mod:`evaluation.benchmarks.st_train`).

Every setting is its own process, so its peak RSS (the kernel's ``ru_maxrss`` of that
child) is its own; the first step of every run is warm-up and is not timed. Measured:
training examples/s and real-token/s at batch 16 (classical templates vs MNRL; echo vs
classical) and 256 (GradCache vs CachedMNRL, same chunk), MFU against this machine's
bf16 and fp32 matmul peaks (:mod:`evaluation.benchmarks.flops`), peak RSS with GradCache
at batch 16, 256 and 1024, and encoding tokens/s (:mod:`evaluation.benchmarks.encoding`).
Writes the JSON, a Markdown report with every figure and the targets, and one PNG chart; on
the way, each finished setting goes to ``OUT.partial.json`` (removed once the JSON is
written), so a run stopped after an hour keeps what it measured.

``--quick`` runs the same code paths tiny (batch 4 and 8, two steps, a few texts): it only
proves the benchmark works. ``--profile`` adds torch.profiler's top ops over two training
steps (``train/launchers/profile_steps.py``). ``--plan`` prints ``train/cost_model.py``'s
prediction for a run config instead of measuring anything.

A CLI that nothing imports, so it alone in evaluation may import train (its config schema
and cost model; tests/test_layers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml
from matplotlib.figure import Figure
from transformers import AutoTokenizer

from data.formats import write_jsonl
from echo_base import BadInputError, atomic_file
from evaluation.benchmarks.flops import matmul_peak, training_flops
from evaluation.benchmarks.workload import (TEXT_TOKENS, bench_rows, long_documents, prompt_max_length,
                                            row_prompt_lengths, short_texts)
from evaluation.report import save_png
from models.lora import LoraConfig
from models.registry import resolve_model
from models.templates import get_template_set
from models.tokenization import PromptTokenizer

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "train" / "finetune.py"
BASE_CONFIG = ROOT / "configs" / "echo_lora.yaml"
MODEL = "smollm2-135m-instruct"
ECHO, CLASSICAL, ST = "echo_instruct", "classical_instruct", "sentence_transformers"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear", "layers": None}
MEMORY_FLOOR_GB = 1.5  # a setting is stopped when the machine has less memory than this left (run_process)

# The targets, each a ratio measured in this one run: (summary key, what it means, comparison, threshold).
# The batch sizes in braces are the run's (:class:`Sizes`): 16, 256 and 1024 but under --quick.
TARGETS = [
    ("train_speedup_vs_st", "classical training examples/s / ST MultipleNegativesRankingLoss's, batch {small_batch}",
     ">=", 1.5),
    ("train_speedup_vs_st_cached", "GradCache examples/s / ST CachedMultipleNegativesRankingLoss's, batch "
     "{large_batch}, chunk {chunk}", ">=", 1.5),
    ("mfu_bf16", "MFU of echo training at batch {small_batch}, of the measured bf16 matmul peak", ">=", 0.5),
    ("echo_rss_vs_st_classical", "echo training peak RSS / ST MultipleNegativesRankingLoss's, batch {small_batch}",
     "<=", 1.0),
    ("gradcache_peak_rss_ratio_1024_vs_16", "GradCache peak RSS at batch {largest_batch} / at batch {small_batch}",
     "<=", 1.5),
    ("echo_vs_classical_encode_time", "echo encode wall time / classical's, short texts", "<=", 2.2),
    ("long_vs_short_encode_tokens_per_s", "long-document vs short-text encode tokens/s, larger / smaller", "<=", 1.5),
]


@dataclass(frozen=True)
class Sizes:
    """How big each measured setting is (:data:`FULL` or :data:`QUICK`)."""

    rows: int  # training rows written for both sides
    small_batch: int  # the equal-batch comparison (16), echo vs classical
    large_batch: int  # GradCache vs CachedMNRL (256)
    largest_batch: int  # the top of the GradCache memory series (1024)
    chunk: int  # GradCache chunk (sequences per forward) = CachedMNRL mini_batch_size
    small_steps: int  # steps at small_batch, the first one warm-up
    large_steps: int  # steps at large_batch (and the memory series below it)
    largest_steps: int  # steps at largest_batch (memory only)
    short_texts: int
    long_texts: int
    encode_batch: int
    encode_repeats: int


FULL = Sizes(rows=1024, small_batch=16, large_batch=256, largest_batch=1024, chunk=32, small_steps=5, large_steps=2,
             largest_steps=1, short_texts=256, long_texts=24, encode_batch=32, encode_repeats=2)
QUICK = Sizes(rows=64, small_batch=4, large_batch=8, largest_batch=8, chunk=4, small_steps=2, large_steps=2,
              largest_steps=2, short_texts=8, long_texts=2, encode_batch=4, encode_repeats=1)


@dataclass(frozen=True)
class ProjectRun:
    """One ``train/finetune.py`` run; equal runs are measured once."""

    template_set: str
    batch: int
    steps: int
    chunk_size: int | None = None
    chunk_tokens: int | None = None
    packing: bool | None = None  # None: the config's default

    def describe(self) -> str:
        chunk = (f", GradCache chunk {self.chunk_size}" if self.chunk_size else "") + (
            f", GradCache chunk {self.chunk_tokens} tokens" if self.chunk_tokens else "")
        packing = "" if self.packing is None else (", packed" if self.packing else ", padded")
        return f"project {self.template_set} batch {self.batch}{chunk}{packing}"

    def overrides(self, max_length: int, output_dir: Path) -> list[str]:
        overrides = [f"output_dir={output_dir}", f"model.template_set={self.template_set}",
                     f"model.max_length={max_length}", f"train.batch_size={self.batch}", f"train.max_steps={self.steps}",
                     f"train.chunk_size={'null' if self.chunk_size is None else self.chunk_size}"]
        if self.chunk_tokens is not None:
            overrides.append(f"train.chunk_tokens={self.chunk_tokens}")
        if self.packing is not None:
            overrides.append(f"model.packing={str(self.packing).lower()}")
        return overrides


@dataclass(frozen=True)
class STRun:
    """One sentence-transformers training run (:mod:`evaluation.benchmarks.st_train`)."""

    batch: int
    steps: int
    mini_batch_size: int | None = None  # None: MNRL; else CachedMNRL

    def describe(self) -> str:
        loss = f"CachedMNRL mini-batch {self.mini_batch_size}" if self.mini_batch_size else "MNRL"
        return f"sentence-transformers {loss} batch {self.batch}"


def run_process(command: list[str], log_path: Path) -> dict[str, Any]:
    """Run ``command`` from the repository root, output to ``log_path``; its exit code, peak RSS (GB) and wall time.

    The peak is the kernel's ``ru_maxrss`` of that child alone (``os.wait4``), so every
    setting's figure is its own process's whatever it reports itself. A setting that would
    exhaust the machine's memory (less than :data:`MEMORY_FLOOR_GB` left available) is
    stopped before the kernel's out-of-memory killer picks a process, on a shared machine
    perhaps another user's; it ends with ``stopped_for_memory``. An interrupted bench
    stops its running setting too.
    """
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    stopped_for_memory = False
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if not stopped_for_memory and psutil.virtual_memory().available < MEMORY_FLOOR_GB * 2**30:
                    stopped_for_memory = True
                    process.kill()
                time.sleep(0.2)
        except BaseException:
            process.kill()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {"returncode": process.returncode, "peak_rss_gb": usage.ru_maxrss / 2**20,  # KiB on Linux
            "wall_s": time.perf_counter() - started, "stopped_for_memory": stopped_for_memory}


def _failure(command: list[str], log_path: Path, process: dict[str, Any]) -> dict[str, Any]:
    """What a failed setting records (and prints): how it ended and its log's last lines."""
    returncode = process["returncode"]
    if process["stopped_for_memory"]:
        error = (f"stopped at {process['peak_rss_gb']:.1f} GB peak RSS: the machine had less than "
                 f"{MEMORY_FLOOR_GB:g} GB left available")
    elif returncode == -signal.SIGKILL:
        error = "killed (SIGKILL: most likely the kernel's out-of-memory killer)"
    elif returncode < 0:
        error = f"killed by {signal.Signals(-returncode).name}"
    else:
        error = f"exit {returncode}"
    tail = log_path.read_text(errors="replace").splitlines()[-15:]
    print(f"  FAILED, {error}: {' '.join(command)}\n    " + "\n    ".join(tail), flush=True)
    return {"error": error, "log_tail": tail}


def read_training_log(log_file: Path, batch: int) -> dict[str, Any]:
    """Throughput of the steps after the first and the logged peak memory, from a run's ``log.jsonl``.

    Each step's record carries its own rates (``train.log_every=1``); its seconds are
    ``batch / examples_per_s`` and its tokens ``tokens_per_s`` x seconds, so the totals
    weigh every timed step by its length.
    """
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    steps = [record for record in records if "train/examples_per_s" in record]
    timed = [record for record in steps if record["step"] > 1]
    step_seconds = [batch / record["train/examples_per_s"] for record in timed]
    tokens = sum(record["train/tokens_per_s"] * seconds for record, seconds in zip(timed, step_seconds))
    seconds = sum(step_seconds)
    return {
        "timed_steps": len(timed), "seconds": seconds, "tokens": tokens, "step_seconds": step_seconds,
        "examples_per_s": batch * len(timed) / seconds if timed else None,
        "tokens_per_s": tokens / seconds if timed else None,
        "logged_peak_memory_gb": max((record["train/peak_memory_gb"] for record in steps), default=None),
        "final_loss": steps[-1]["train/loss"] if steps else None,
    }


def decoder_sizes(model: str) -> dict[str, int]:
    """What :func:`~evaluation.benchmarks.flops.training_flops` needs of ``model`` under the bench's LoRA:
    ``matmul_params`` (N), ``lora_params`` (N_lora), ``layers``, ``attention_width``.

    ``model`` is a local folder or a name ``train/cost_model.py`` knows the shape of.
    """
    from train.cost_model import lora_parameters, model_shape  # lazily, as for --plan: it is written apart

    shape = model_shape(model)
    return {"matmul_params": shape.matmul_parameters(), "lora_params": lora_parameters(shape, LoraConfig(**LORA)),
            "layers": shape.layers, "attention_width": shape.query_width}


def bench_config(rows_path: Path) -> dict[str, Any]:
    """The run config every project run starts from: ``configs/echo_lora.yaml`` with the bench's
    model, LoRA and rows, and nothing a timed run should not do (dev evaluation, checkpoints
    on the way, export, wandb). Each run adds its own ``key=value`` overrides (:meth:`ProjectRun.overrides`)."""
    return {
        "base": str(BASE_CONFIG), "model": {"name": MODEL, "pooling": "mean", "precision": "bf16"}, "lora": LORA,
        "data": {"mix": None, "dev": None, "num_negatives": 1, "datasets": [{"name": "bench", "path": str(rows_path)}]},
        "train": {"warmup_steps": 0, "save_every": None, "resume": "none", "log_every": 1, "eval_every": None},
        "export": {"enabled": False}, "wandb": {"mode": "disabled"},
    }


class Bench:
    """The measured settings of one benchmark run, each run once, with the workload they share.

    Every finished setting is also written at once to ``partial_path`` (when given), so a
    run stopped on the way (an hour at full size on a shared CPU) keeps what it measured.
    """

    def __init__(self, work: Path, sizes: Sizes, partial_path: Path | None = None) -> None:
        self.work, self.sizes, self.partial_path = work, sizes, partial_path
        self._finished: dict[str, dict] = {}
        self.model_path = resolve_model(MODEL)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.rows = bench_rows(tokenizer, sizes.rows)
        self.rows_path = work / "rows.jsonl"
        write_jsonl(self.rows_path, self.rows)
        self.text_tokens = TEXT_TOKENS
        instructions = [row["instruction"] for row in self.rows]
        self.max_length = {name: prompt_max_length(tokenizer, get_template_set(name), TEXT_TOKENS, instructions)
                           for name in (ECHO, CLASSICAL)}

        # Real tokens of every prompt of the rows as each side builds them (ST: the bare, capped
        # texts), and the FLOPs per token of training on them.
        prompt_lengths = {name: row_prompt_lengths(PromptTokenizer(tokenizer, get_template_set(name), append_eos=False,
                                                                   max_length=self.max_length[name]), self.rows)
                          for name in (ECHO, CLASSICAL)}
        texts = [text for row in self.rows for text in (row["query"], row["positive"], *row["negatives"])]
        prompt_lengths[ST] = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=TEXT_TOKENS)["input_ids"]]
        self.decoder = decoder_sizes(self.model_path)
        self.flops = {name: training_flops(lengths=lengths, **self.decoder) for name, lengths in prompt_lengths.items()}
        self.mean_prompt_tokens = {name: sum(lengths) / len(lengths) for name, lengths in prompt_lengths.items()}
        self.peaks: dict[str, float] = {}
        self._project: dict[ProjectRun, dict] = {}
        self._st: dict[STRun, dict] = {}
        self.config_path = work / "bench.yaml"
        self.config_path.write_text(yaml.safe_dump(bench_config(self.rows_path), sort_keys=False))

    def measure_peaks(self) -> dict[str, float]:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.peaks = {"bf16_flops": matmul_peak(torch.bfloat16, device=device),
                      "fp32_flops": matmul_peak(torch.float32, device=device),
                      "threads": torch.get_num_threads(), "device": device, "matmul_size": 2048}
        print(f"matmul peak ({self.peaks['threads']} threads, {device}): bf16 {self.peaks['bf16_flops'] / 1e9:.1f} "
              f"GFLOP/s, fp32 {self.peaks['fp32_flops'] / 1e9:.1f} GFLOP/s", flush=True)
        return self.peaks

    def _mfu(self, flops: dict[str, float], tokens_per_s: float | None, recompute: bool) -> dict[str, float | None]:
        if not tokens_per_s or not self.peaks:
            return {}
        achieved = flops["total_per_token"] * tokens_per_s
        figures = {"achieved_flops": achieved, "mfu_bf16": achieved / self.peaks["bf16_flops"],
                   "mfu_fp32": achieved / self.peaks["fp32_flops"]}
        if recompute:  # GradCache's forward without grad, on top
            with_recompute = (flops["total_per_token"] + flops["recompute_per_token"]) * tokens_per_s
            figures.update({"achieved_flops_with_recompute": with_recompute,
                            "mfu_bf16_with_recompute": with_recompute / self.peaks["bf16_flops"]})
        return figures

    def project(self, run: ProjectRun) -> dict[str, Any]:
        """Train ``run`` with ``train/finetune.py`` in its own process (once per distinct run)."""
        if run in self._project:
            return self._project[run]
        index = len(self._project) + len(self._st)
        output_dir = self.work / f"run-{index:02d}"
        command = [sys.executable, str(FINETUNE), "--config", str(self.config_path),
                   *run.overrides(self.max_length[run.template_set], output_dir)]
        process = run_process(command, self.work / f"run-{index:02d}.log")
        result: dict[str, Any] = {**asdict(run), "max_length": self.max_length[run.template_set], **process}
        if process["returncode"]:
            result.update(_failure(command, self.work / f"run-{index:02d}.log", process))
        else:
            result.update(read_training_log(output_dir / "log.jsonl", run.batch))
            gradcache = run.chunk_size is not None or run.chunk_tokens is not None
            result.update(self._mfu(self.flops[run.template_set], result["tokens_per_s"], gradcache))
            print(f"{run.describe()}: {_rate_line(result)}", flush=True)
        self._project[run] = result
        return self._keep(run.describe(), result)

    def st(self, run: STRun) -> dict[str, Any]:
        """Train ``run`` with sentence-transformers in its own process (once per distinct run)."""
        if run in self._st:
            return self._st[run]
        index = len(self._project) + len(self._st)
        log_path = self.work / f"run-{index:02d}.log"
        command = [sys.executable, "-m", "evaluation.benchmarks.st_train", "--model", self.model_path,
                   "--rows", str(self.rows_path), "--batch-size", str(run.batch), "--steps", str(run.steps),
                   "--max-seq-length", str(self.text_tokens), "--lora-r", str(LORA["r"]),
                   "--lora-alpha", str(LORA["alpha"]), "--lora-dropout", str(LORA["dropout"])]
        if run.mini_batch_size:
            command += ["--mini-batch-size", str(run.mini_batch_size)]
        process = run_process(command, log_path)
        result: dict[str, Any] = {**asdict(run), **process}
        if process["returncode"]:
            result.update(_failure(command, log_path, process))
        else:
            reported = json.loads(log_path.read_text().strip().splitlines()[-1])
            result.update({key: value for key, value in reported.items() if key != "peak_rss_gb"},
                          reported_peak_rss_gb=reported["peak_rss_gb"])
            result.update(self._mfu(self.flops[ST], result["tokens_per_s"],
                                    run.mini_batch_size is not None))
            print(f"{run.describe()}: {_rate_line(result)}", flush=True)
        self._st[run] = result
        return self._keep(run.describe(), result)

    def encoding(self) -> dict[str, Any]:
        """Encoding tokens/s (:mod:`evaluation.benchmarks.encoding`) in its own process."""
        texts_path = self.work / "texts.json"
        texts_path.write_text(json.dumps({"short": short_texts(self.sizes.short_texts),
                                          "long": long_documents(self.sizes.long_texts)}))
        log_path = self.work / "encoding.log"
        command = [sys.executable, "-m", "evaluation.benchmarks.encoding", "--model", MODEL, "--texts", str(texts_path),
                   "--batch-size", str(self.sizes.encode_batch), "--repeats", str(self.sizes.encode_repeats),
                   "--short-cap", str(self.text_tokens)]
        process = run_process(command, log_path)
        if process["returncode"]:
            return self._keep("encoding", {**process, **_failure(command, log_path, process)})
        result = {**json.loads(log_path.read_text().strip().splitlines()[-1]), "wall_s": process["wall_s"]}
        for group in ("short", "long"):
            for name in (ECHO, CLASSICAL):
                figures = result[group][name]
                print(f"encode {group} {name}: {figures['texts']} texts, {figures['tokens']} tokens, "
                      f"{figures['seconds']:.2f} s, {figures['tokens_per_s']:.0f} tokens/s", flush=True)
            versus = result[f"vs_st_{group}"]
            print(f"encode {group}, text cap {versus['text_cap']}: project classical "
                  f"{versus['project_classical']['texts_per_s']:.2f} texts/s vs sentence-transformers "
                  f"{versus['sentence_transformers']['texts_per_s']:.2f} texts/s", flush=True)
        return self._keep("encoding", result)

    def profile(self, run: ProjectRun) -> dict[str, Any]:
        """torch.profiler's top ops by self CPU time over two steps of ``run`` (``train/launchers/profile_steps.py``)."""
        output_dir, out = self.work / "profile-run", self.work / "profile.json"
        command = [sys.executable, "-m", "train.launchers.profile_steps", "--out", str(out), "--",
                   "--config", str(self.config_path), *run.overrides(self.max_length[run.template_set], output_dir)]
        process = run_process(command, self.work / "profile.log")
        if process["returncode"]:
            return self._keep("profile", {**process, **_failure(command, self.work / "profile.log", process)})
        result = {"run": run.describe(), **json.loads(out.read_text())}
        print(f"profile of {run.describe()}, top ops by self CPU time:", flush=True)
        for op in result["ops"][:10]:
            print(f"  {op['self_cpu_share']:6.1%}  {op['self_cpu_ms']:9.0f} ms  {op['calls']:6d} calls  {op['name']}",
                  flush=True)
        return self._keep("profile", result)

    def _keep(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        self._finished[name] = result
        if self.partial_path is not None:
            with atomic_file(self.partial_path) as staging:
                staging.write_text(json.dumps(self._finished, indent=2) + "\n", encoding="utf-8")
        return result


def _rate_line(result: dict[str, Any]) -> str:
    mfu = f", MFU {result['mfu_bf16']:.1%} of bf16 peak" if result.get("mfu_bf16") is not None else ""
    rates = (f"{result['examples_per_s']:.2f} examples/s, {result['tokens_per_s']:.0f} tokens/s over "
             f"{result['timed_steps']} timed steps" if result.get("examples_per_s") else "no timed step")
    return f"{rates}, peak RSS {result['peak_rss_gb']:.2f} GB{mfu}"


def _chunk_words(item: dict[str, Any]) -> str:
    return f"chunks of {item['chunk_tokens']} tokens" if item.get("chunk_tokens") else f"chunks of {item['chunk_size']}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def measure(sizes: Sizes, quick: bool, profile: bool, work: Path, partial_path: Path | None = None) -> dict[str, Any]:
    """Every setting, in the order the figures print; returns the raw results and the summary.

    Each finished setting is written to ``partial_path`` on the way (:class:`Bench`)."""
    bench = Bench(work, sizes, partial_path)
    print(f"model {MODEL}: N = {bench.decoder['matmul_params'] / 1e6:.1f}M matmul parameters, "
          f"N_lora = {bench.decoder['lora_params'] / 1e6:.2f}M; "
          f"text cap {bench.text_tokens} tokens -> model.max_length {bench.max_length}; {sizes.rows} rows; "
          f"mean prompt tokens {', '.join(f'{k} {v:.1f}' for k, v in bench.mean_prompt_tokens.items())}", flush=True)
    bench.measure_peaks()
    small, large, chunk = sizes.small_batch, sizes.large_batch, sizes.chunk
    runs = {
        "classical_small": ProjectRun(CLASSICAL, small, sizes.small_steps),
        "echo_small": ProjectRun(ECHO, small, sizes.small_steps),
        "classical_large_gradcache": ProjectRun(CLASSICAL, large, sizes.large_steps, chunk_size=chunk),
    }
    st_runs = {"mnrl_small": STRun(small, sizes.small_steps),
               "cached_mnrl_large": STRun(large, sizes.large_steps, mini_batch_size=chunk)}
    project: dict[str, dict] = {}
    st: dict[str, dict] = {}
    project["classical_small"] = bench.project(runs["classical_small"])
    st["mnrl_small"] = bench.st(st_runs["mnrl_small"])
    project["echo_small"] = bench.project(runs["echo_small"])
    if not quick:  # the default packs; the padded run is the extra figure (its path is the same run with one key)
        runs["echo_small_padded"] = ProjectRun(ECHO, small, sizes.small_steps, packing=False)
        project["echo_small_padded"] = bench.project(runs["echo_small_padded"])
    project["classical_large_gradcache"] = bench.project(runs["classical_large_gradcache"])
    st["cached_mnrl_large"] = bench.st(st_runs["cached_mnrl_large"])
    # The fixed chunk of the memory series: a token budget (chunk x the mean prompt), so every chunk
    # holds about as many tokens whatever the batch. Sequences are chunked by length, so a large
    # batch's chunks of `chunk` sequences fill with its longest prompts while a small batch's mix
    # lengths: a sequence count is not a fixed memory.
    fixed_chunk = {"chunk_tokens": max(16, round(chunk * bench.mean_prompt_tokens[CLASSICAL]))}
    runs["classical_large_gradcache_tokens"] = ProjectRun(CLASSICAL, large, sizes.large_steps, **fixed_chunk)
    project["classical_large_gradcache_tokens"] = bench.project(runs["classical_large_gradcache_tokens"])
    # Peak RSS with GradCache at that chunk as the batch grows (classical templates, as the runs at `large`).
    gradcache_rss = []
    for batch, steps in ((small, sizes.large_steps), (large, sizes.large_steps), (sizes.largest_batch, sizes.largest_steps)):
        result = bench.project(ProjectRun(CLASSICAL, batch, steps, **fixed_chunk))
        gradcache_rss.append({"batch": batch, "steps": steps, **fixed_chunk,
                              "peak_rss_gb": result["peak_rss_gb"] if "error" not in result else None})
    print("GradCache peak RSS by batch: " + ", ".join(f"{item['batch']}: {item['peak_rss_gb']:.2f} GB"
                                                      for item in gradcache_rss if item["peak_rss_gb"]), flush=True)
    encoding = bench.encoding()
    profiled = bench.profile(ProjectRun(ECHO, small, 3)) if profile else None

    raw = {"model": MODEL, "model_path": bench.model_path, "quick": quick, "sizes": asdict(sizes),
           "text_tokens": bench.text_tokens, "max_length": bench.max_length, "lora": LORA,
           "decoder": bench.decoder, "mean_prompt_tokens": bench.mean_prompt_tokens,
           "matmul_peak": bench.peaks, "flops_per_token": bench.flops,
           "project": project, "sentence_transformers": st, "gradcache_rss": gradcache_rss, "encoding": encoding,
           "profile": profiled}
    return {**summarize(raw), **raw}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (each a ratio within this run) and the targets, from the raw results."""
    project, st, encoding = raw["project"], raw["sentence_transformers"], raw["encoding"]
    rss = [item["peak_rss_gb"] for item in raw["gradcache_rss"]]
    summary: dict[str, Any] = {
        "train_speedup_vs_st": _ratio(project["classical_small"].get("examples_per_s"),
                                      st["mnrl_small"].get("examples_per_s")),
        "train_speedup_vs_st_cached": _ratio(project["classical_large_gradcache"].get("examples_per_s"),
                                             st["cached_mnrl_large"].get("examples_per_s")),
        "train_tokens_speedup_vs_st": _ratio(project["classical_small"].get("tokens_per_s"),
                                             st["mnrl_small"].get("tokens_per_s")),
        "echo_vs_classical_train_examples_per_s": _ratio(project["echo_small"].get("examples_per_s"),
                                                         project["classical_small"].get("examples_per_s")),
        "mfu_bf16": project["echo_small"].get("mfu_bf16"),
        "mfu_fp32": project["echo_small"].get("mfu_fp32"),
        "echo_rss_vs_st_classical": _ratio(project["echo_small"].get("peak_rss_gb"), st["mnrl_small"].get("peak_rss_gb")),
        "gradcache_peak_rss_ratio_1024_vs_16": _ratio(rss[-1], rss[0]),
    }
    if "echo_small_padded" in project:
        summary["echo_packed_vs_padded_train_examples_per_s"] = _ratio(
            project["echo_small"].get("examples_per_s"), project["echo_small_padded"].get("examples_per_s"))
    encode_keys = ("echo_vs_classical_encode_time", "echo_vs_classical_encode_time_long", "short_text_encode_tokens_per_s",
                   "long_doc_encode_tokens_per_s", "long_vs_short_encode_tokens_per_s", "encode_speedup_vs_st_short",
                   "encode_speedup_vs_st_long")
    summary.update(dict.fromkeys(encode_keys))  # None where the encoding process failed
    if "error" not in encoding:
        short, long = encoding["short"], encoding["long"]
        short_rate, long_rate = short[ECHO]["tokens_per_s"], long[ECHO]["tokens_per_s"]
        summary.update({
            "echo_vs_classical_encode_time": short[ECHO]["seconds"] / short[CLASSICAL]["seconds"],
            "echo_vs_classical_encode_time_long": long[ECHO]["seconds"] / long[CLASSICAL]["seconds"],
            "short_text_encode_tokens_per_s": short_rate,
            "long_doc_encode_tokens_per_s": long_rate,
            "long_vs_short_encode_tokens_per_s": max(short_rate, long_rate) / min(short_rate, long_rate),
            "encode_speedup_vs_st_short": encoding["vs_st_short"]["sentence_transformers"]["seconds"]
            / encoding["vs_st_short"]["project_classical"]["seconds"],
            "encode_speedup_vs_st_long": encoding["vs_st_long"]["sentence_transformers"]["seconds"]
            / encoding["vs_st_long"]["project_classical"]["seconds"],
        })
    summary["targets"] = [
        {"key": key, "what": what.format(**raw["sizes"]), "target": f"{comparison} {threshold:g}",
         "value": summary[key], "passed": None if summary[key] is None
         else (summary[key] >= threshold if comparison == ">=" else summary[key] <= threshold)}
        for key, what, comparison, threshold in TARGETS]
    return summary


# -- the report -----------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"
    return str(value)


def format_report(results: dict[str, Any], chart_name: str) -> str:
    """The Markdown report: settings, the targets with pass/fail, every figure, the profile, the chart."""
    sizes, peaks = results["sizes"], results["matmul_peak"]
    lines = [f"# Benchmark: this project vs sentence-transformers{' (--quick: proves the code paths only)' if results['quick'] else ''}",
             "",
             f"`{results['model']}`, LoRA r={results['lora']['r']} alpha={results['lora']['alpha']} on every linear layer "
             f"of every layer, bf16, mean pooling, {results['text_tokens']} text tokens per text "
             f"(this project's `model.max_length`: {', '.join(f'{k} {v}' for k, v in results['max_length'].items())}), "
             f"{sizes['rows']} fixed rows of the default training mix (query, positive, one hard negative). "
             f"{peaks.get('threads')} threads on {peaks.get('device')}; each setting its own process; the first step of "
             f"every run is not timed.", "",
             f"![benchmark chart]({chart_name})", "", "## Targets", "", "| target | value | wanted | result |",
             "|---|---:|---|---|"]
    for target in results["targets"]:
        verdict = "–" if target["passed"] is None else ("pass" if target["passed"] else "**fail**")
        lines.append(f"| {target['what']} | {_fmt(target['value'])} | {target['target']} | {verdict} |")
    lines += ["", "## Training", "",
              "| run | batch | chunk | timed steps | examples/s | tokens/s | peak RSS GB | MFU bf16 | MFU fp32 | "
              "MFU bf16 incl. recompute |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, result in [*(("project " + k, v) for k, v in results["project"].items()),
                         *(("sentence-transformers " + k, v) for k, v in results["sentence_transformers"].items())]:
        chunk = result.get("chunk_size") or result.get("mini_batch_size") or (
            f"{result['chunk_tokens']} tokens" if result.get("chunk_tokens") else "–")
        label = name + (" (packing off)" if result.get("packing") is False else "") + (
            f" (failed: {result['error']})" if "error" in result else "")
        lines.append(f"| {label} | {result.get('batch')} | {chunk} | {_fmt(result.get('timed_steps'))} | "
                     f"{_fmt(result.get('examples_per_s'))} | {_fmt(result.get('tokens_per_s'))} | "
                     f"{_fmt(result.get('peak_rss_gb'))} | {_fmt(result.get('mfu_bf16'))} | "
                     f"{_fmt(result.get('mfu_fp32'))} | {_fmt(result.get('mfu_bf16_with_recompute'))} |")
    lines += ["", "Ratios: " + "; ".join(f"{key} {_fmt(results.get(key))}" for key in (
        "train_speedup_vs_st", "train_tokens_speedup_vs_st", "train_speedup_vs_st_cached",
        "echo_vs_classical_train_examples_per_s", "echo_packed_vs_padded_train_examples_per_s") if key in results) + ".",
              "", f"GradCache peak RSS (classical templates, {_chunk_words(results['gradcache_rss'][0])}): "
              + ", ".join(f"batch {item['batch']} {_fmt(item['peak_rss_gb'])} GB ({item['steps']} steps)"
                          for item in results["gradcache_rss"]) + ".",
              "", "## FLOPs and MFU", "",
              f"Matmul peak ({peaks.get('matmul_size')}x{peaks.get('matmul_size')}, best of 5): bf16 "
              f"{_fmt(peaks.get('bf16_flops', 0) / 1e9)} GFLOP/s, fp32 {_fmt(peaks.get('fp32_flops', 0) / 1e9)} GFLOP/s. "
              f"N = {results['decoder']['matmul_params']:,} matmul parameters, N_lora = {results['decoder']['lora_params']:,}. "
              "Per real token: 4N (frozen base: forward, input gradients) + 6 N_lora + causal attention "
              "(3 x 2 t^2 d_attn per sequence and layer); GradCache adds a forward without grad (recompute).", "",
              "| prompts of | mean tokens | GFLOP/token: base | LoRA | attention | total | GradCache recompute |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, flops in results["flops_per_token"].items():
        tokens = flops["tokens"]
        lines.append(f"| {name} | {_fmt(results['mean_prompt_tokens'][name])} | "
                     f"{flops['base'] / tokens / 1e9:.4f} | {flops['lora'] / tokens / 1e9:.4f} | "
                     f"{flops['attention'] / tokens / 1e9:.4f} | {flops['total_per_token'] / 1e9:.4f} | "
                     f"{flops['recompute_per_token'] / 1e9:.4f} |")
    encoding = results["encoding"]
    lines += ["", "## Encoding", ""]
    if "error" in encoding:
        lines.append(f"failed: {encoding['error']}")
    else:
        lines += [f"Documents, batch {encoding['batch_size']}, best of {encoding['repeats']}; echo vs classical through "
                  f"`EchoEncoder.from_pretrained` (default prompt cap {encoding['default_max_length']}).", "",
                  "| texts | encoder | texts | tokens | seconds | tokens/s | texts/s |", "|---|---|---:|---:|---:|---:|---:|"]
        for group in ("short", "long"):
            for name, figures in encoding[group].items():
                lines.append(f"| {group} | {name} | {figures['texts']} | {figures['tokens']} | {_fmt(figures['seconds'])} | "
                             f"{_fmt(figures['tokens_per_s'])} | {_fmt(figures['texts_per_s'])} |")
            versus = encoding[f"vs_st_{group}"]
            for name, figures in (("project classical", versus["project_classical"]),
                                  ("sentence-transformers", versus["sentence_transformers"])):
                lines.append(f"| {group}, text cap {versus['text_cap']} | {name} | {figures['texts']} | {figures['tokens']} | "
                             f"{_fmt(figures['seconds'])} | {_fmt(figures['tokens_per_s'])} | {_fmt(figures['texts_per_s'])} |")
    if results.get("profile") and "ops" in results["profile"]:
        profile = results["profile"]
        lines += ["", "## Profile", "",
                  f"{profile['run']}, {profile['active_steps']} steps after a warm-up step, "
                  f"{_fmt(profile['self_cpu_total_ms'] / 1e3)} s of self CPU time:", "",
                  "| op | calls | self CPU ms | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{op['name']}` | {op['calls']} | {op['self_cpu_ms']:.0f} | {op['self_cpu_share']:.1%} |"
                  for op in profile["ops"]]
    return "\n".join(lines) + "\n"


def plot_report(results: dict[str, Any], path: Path) -> None:
    """One PNG, three panels: training examples/s, peak RSS by batch, encoding tokens/s."""
    project, st = results["project"], results["sentence_transformers"]
    figure = Figure(figsize=(15, 4.2), layout="constrained")
    train_axes, memory_axes, encode_axes = figure.subplots(1, 3)
    bars = [("classical\nbatch %d" % project["classical_small"]["batch"], project["classical_small"], st["mnrl_small"]),
            ("GradCache\nbatch %d" % project["classical_large_gradcache"]["batch"], project["classical_large_gradcache"],
             st["cached_mnrl_large"])]
    positions = range(len(bars))
    ours = train_axes.bar([p - 0.2 for p in positions], [b[1].get("examples_per_s") or 0 for b in bars], 0.4,
                          label="this project")
    theirs = train_axes.bar([p + 0.2 for p in positions], [b[2].get("examples_per_s") or 0 for b in bars], 0.4,
                            label="sentence-transformers")
    echo = train_axes.bar([len(bars)], [project["echo_small"].get("examples_per_s") or 0], 0.4, label="this project, echo")
    for container in (ours, theirs, echo):
        train_axes.bar_label(container, fmt="%.2f", fontsize=7)
    train_axes.set_xticks([*positions, len(bars)], [b[0] for b in bars] + ["echo\nbatch %d" % project["echo_small"]["batch"]])
    train_axes.set_ylabel("training examples/s")
    train_axes.legend(fontsize=7)

    series = [item for item in results["gradcache_rss"] if item["peak_rss_gb"]]
    memory_axes.plot([item["batch"] for item in series], [item["peak_rss_gb"] for item in series], marker="o",
                     label=f"this project, GradCache {_chunk_words(results['gradcache_rss'][0])}")
    for name, result in st.items():
        if result.get("peak_rss_gb"):
            memory_axes.scatter([result["batch"]], [result["peak_rss_gb"]], marker="s", label=f"ST {name}")
    for name in ("classical_small", "echo_small"):
        memory_axes.scatter([project[name]["batch"]], [project[name]["peak_rss_gb"]], marker="^", label=f"this project {name}")
    memory_axes.set_xscale("log", base=2)
    batches = sorted({item["batch"] for item in series} | {result["batch"] for result in st.values()})
    memory_axes.set_xticks(batches, [str(batch) for batch in batches])
    memory_axes.minorticks_off()
    memory_axes.set_xlabel("global batch (queries)")
    memory_axes.set_ylabel("peak RSS (GB)")
    memory_axes.set_ylim(bottom=0)
    memory_axes.legend(fontsize=7)

    encoding = results["encoding"]
    if "error" not in encoding:
        labels = [ECHO, CLASSICAL, "classical, capped", "ST, capped"]
        for offset, group in ((-0.2, "short"), (0.2, "long")):
            versus = encoding[f"vs_st_{group}"]
            values = [encoding[group][ECHO]["tokens_per_s"], encoding[group][CLASSICAL]["tokens_per_s"],
                      versus["project_classical"]["tokens_per_s"], versus["sentence_transformers"]["tokens_per_s"]]
            encode_axes.bar_label(encode_axes.bar([i + offset for i in range(len(labels))], values, 0.4,
                                                  label=f"{group} texts"), fmt="%.0f", fontsize=7)
        encode_axes.set_xticks(range(len(labels)), labels, fontsize=8)
        encode_axes.set_ylabel("encoding real tokens/s")
        encode_axes.legend(fontsize=7)
    for axes in (train_axes, memory_axes, encode_axes):
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{results['model']}: this project vs sentence-transformers"
                    + (" (--quick)" if results["quick"] else ""))
    save_png(figure, path)


def write_outputs(results: dict[str, Any], json_path: Path, report_path: Path) -> Path:
    """The JSON, the Markdown report and its chart (next to the report); returns the chart's path."""
    chart = report_path.with_suffix(".png")
    for path in (json_path, report_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    plot_report(results, chart)
    with atomic_file(json_path) as staging:
        staging.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with atomic_file(report_path) as staging:
        staging.write_text(format_report(results, os.path.relpath(chart, report_path.parent)), encoding="utf-8")
    return chart


def plan(config: str, gpus: int, gpu_peak_tflops: float, mfu: float) -> str:
    """``train/cost_model.py``'s predicted memory and time for the run ``config`` describes, as a table."""
    from train.cost_model import format_plan, plan_run

    return format_plan(plan_run(config, gpus, gpu_peak_tflops, mfu))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="where to write every figure (JSON); required unless --plan")
    parser.add_argument("--report", type=Path, help="Markdown report (default: the JSON's path with .md); "
                        "its chart is the same path with .png")
    parser.add_argument("--quick", action="store_true", help="the same code paths, tiny: proves the benchmark works")
    parser.add_argument("--profile", action="store_true", help="add torch.profiler's top ops over two training steps")
    parser.add_argument("--plan", metavar="CONFIG", help="print train/cost_model.py's plan for this run config instead")
    parser.add_argument("--gpus", type=int, help="with --plan: GPUs of the run")
    parser.add_argument("--gpu-peak-tflops", type=float, help="with --plan: dense bf16 peak of one GPU, TFLOP/s")
    parser.add_argument("--mfu", type=float, default=0.4, help="with --plan: achieved fraction of the peak (default 0.4)")
    args = parser.parse_args(argv)
    # A terminated bench unwinds like an interrupted one: its running setting stops, its work folder goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        if args.plan:
            if args.gpus is None or args.gpu_peak_tflops is None:
                parser.error("--plan needs --gpus and --gpu-peak-tflops")
            print(plan(args.plan, args.gpus, args.gpu_peak_tflops, args.mfu))
            return 0
        if args.json is None:
            parser.error("--json is required (or --plan)")
        started = time.perf_counter()
        partial = args.json.with_suffix(".partial.json")  # the settings finished so far; gone once the JSON is written
        partial.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="echo-bench-") as work:
            results = measure(QUICK if args.quick else FULL, args.quick, args.profile, Path(work), partial)
        results["wall_s"] = time.perf_counter() - started
        report = args.report or args.json.with_suffix(".md")
        chart = write_outputs(results, args.json, report)
        partial.unlink(missing_ok=True)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for target in results["targets"]:
        verdict = "n/a" if target["passed"] is None else ("pass" if target["passed"] else "FAIL")
        print(f"target {target['key']} {target['target']}: {_fmt(target['value'])} {verdict}")
    print(f"wrote {args.json}, {report}, {chart} in {results['wall_s']:.0f} s")
    failed = [name for group in ("project", "sentence_transformers") for name, result in results[group].items()
              if "error" in result] + (["encoding"] if "error" in results["encoding"] else [])
    if failed:
        print(f"failed settings: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
