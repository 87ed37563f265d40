"""The benchmark's pure pieces: FLOP counting, the text budget, its run configs, reading logs, the targets.

No timing is asserted: ``python -m evaluation.bench --quick`` is what proves the benchmark runs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import yaml

from evaluation import bench
from evaluation.bench import (FULL, LORA, TARGETS, ProjectRun, bench_config, decoder_sizes, read_training_log,
                              run_process, summarize)
from evaluation.benchmarks.flops import training_flops
from evaluation.benchmarks.workload import prompt_max_length
from models.templates import get_template_set
from models.tokenization import PromptTokenizer
from tests.tiny_models import build_bpe_tokenizer, build_sentencepiece_tokenizer
from train.config import load_config


def test_training_flops_by_hand() -> None:
    # N = 100, N_lora = 10, 2 layers, d_attn = 4, two sequences of 3 and 5 tokens: 8 tokens.
    flops = training_flops(matmul_params=100, lora_params=10, layers=2, attention_width=4, lengths=[3, 5])
    attention_forward = 2 * (2 * 3 * 3 * 4 + 2 * 5 * 5 * 4)  # layers x sum of 2 t^2 d_attn = 544
    assert flops["base"] == 4 * 100 * 8 == 3200
    assert flops["lora"] == 6 * 10 * 8 == 480
    assert flops["attention"] == 3 * attention_forward == 1632
    assert flops["total"] == 3200 + 480 + 1632
    assert flops["recompute"] == 2 * (100 + 10) * 8 + attention_forward == 2304
    assert flops["tokens"] == 8 and flops["total_per_token"] == pytest.approx(5312 / 8)
    with pytest.raises(ValueError, match="at least one token"):
        training_flops(100, 10, 2, 4, [])


def test_smollm2_sizes_by_hand() -> None:
    # SmolLM2-135M: hidden 576, intermediate 1536, 9 query heads and 3 key/value heads of 64, 30 layers.
    q, kv, mlp = 576 * 576, 576 * 192, 576 * 1536
    lora = 16 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)  # q, o; k, v; gate, up, down
    assert decoder_sizes("smollm2-135m-instruct") == {
        "matmul_params": 30 * (2 * q + 2 * kv + 3 * mlp),  # 106,168,320
        "lora_params": 30 * lora,  # 4,884,480: what peft reports trainable on the ST side
        "layers": 30, "attention_width": 9 * 64}
    assert decoder_sizes("smollm2-135m-instruct")["lora_params"] == 4_884_480


@pytest.mark.parametrize("build_tokenizer", [build_bpe_tokenizer, build_sentencepiece_tokenizer])
@pytest.mark.parametrize("template_set", ["echo_instruct", "classical_instruct", "echo", "prompteol"])
def test_prompt_max_length_leaves_exactly_the_text_budget(build_tokenizer, template_set) -> None:
    tokenizer, templates, text_tokens = build_tokenizer(), get_template_set(template_set), 20
    instructions = ["Retrieve birds", "Given a long instruction about the quick brown fox, retrieve the dog", None]
    long_text = "the quick brown fox jumps over the lazy dog " * 40

    def copy_lengths(max_length: int) -> list[int]:
        """Tokens of each prompt's pooled copy (mean pooling: no EOS), every kind and instruction."""
        prompt_tokenizer = PromptTokenizer(tokenizer, templates, append_eos=False, max_length=max_length)
        return [sum(prompt_tokenizer([long_text], kind, instruction)[0].pooled_mask)
                for kind in ("query", "document") for instruction in instructions]

    max_length = prompt_max_length(tokenizer, templates, text_tokens, instructions)
    assert min(copy_lengths(max_length)) == text_tokens  # the longest template gets exactly the budget
    assert min(copy_lengths(max_length - 1)) == text_tokens - 1  # and one token less is too little
    documents_only = prompt_max_length(tokenizer, templates, text_tokens, instructions, kinds=["document"])
    prompt_tokenizer = PromptTokenizer(tokenizer, templates, append_eos=False, max_length=documents_only)
    assert sum(prompt_tokenizer([long_text], "document")[0].pooled_mask) == text_tokens


def test_project_runs_make_valid_configs(tmp_path) -> None:
    config_file = tmp_path / "bench.yaml"
    config_file.write_text(yaml.safe_dump(bench_config(tmp_path / "rows.jsonl")))
    run = ProjectRun("classical_instruct", batch=256, steps=2, chunk_size=32)
    config = load_config(config_file, run.overrides(163, tmp_path / "out"))
    assert (config.model.template_set, config.model.max_length, config.model.precision) == ("classical_instruct", 163, "bf16")
    assert (config.lora.r, config.lora.alpha, config.lora.dropout, config.lora.layers) == (16, 32, 0.0, None)
    assert config.lora.target_modules == LORA["target_modules"] == "all-linear"
    assert (config.train.batch_size, config.train.max_steps, config.train.chunk_size) == (256, 2, 32)
    assert config.data.mix is None and config.data.dev is None and config.data.num_negatives == 1
    assert [spec.path for spec in config.data.datasets] == [str(tmp_path / "rows.jsonl")]
    assert not config.export.enabled and config.wandb.mode == "disabled" and config.train.save_every is None
    assert config.train.warmup_steps == 0 and config.train.log_every == 1
    single_forward = load_config(config_file, ProjectRun("echo_instruct", 16, 5).overrides(290, tmp_path / "out"))
    assert single_forward.train.chunk_size is None
    assert FULL.small_batch * FULL.small_steps <= FULL.rows >= FULL.largest_batch * FULL.largest_steps


def test_training_log_weighs_each_timed_step_by_its_length(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    records = [{"step": 1, "train/loss": 2.0, "train/examples_per_s": 0.5, "train/tokens_per_s": 10.0,
                "train/peak_memory_gb": 1.0},  # warm-up: never counted
               {"step": 2, "train/loss": 1.5, "train/examples_per_s": 2.0, "train/tokens_per_s": 100.0,
                "train/peak_memory_gb": 1.5},  # batch 4: 2 s, 200 tokens
               {"step": 3, "train/loss": 1.0, "train/examples_per_s": 4.0, "train/tokens_per_s": 300.0,
                "train/peak_memory_gb": 1.25},  # 1 s, 300 tokens
               {"step": 3, "dev/ndcg@10": 0.5}]
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    figures = read_training_log(log, batch=4)
    assert figures["timed_steps"] == 2 and figures["step_seconds"] == [2.0, 1.0]
    assert figures["seconds"] == 3.0 and figures["tokens"] == 500.0
    assert figures["tokens_per_s"] == pytest.approx(500 / 3) and figures["examples_per_s"] == pytest.approx(8 / 3)
    assert figures["logged_peak_memory_gb"] == 1.5 and figures["final_loss"] == 1.0


def test_summary_ratios_and_targets() -> None:
    def trained(examples_per_s: float, rss: float, mfu: float | None = None) -> dict:
        return {"examples_per_s": examples_per_s, "tokens_per_s": 100 * examples_per_s, "peak_rss_gb": rss,
                "mfu_bf16": mfu, "mfu_fp32": None if mfu is None else 2 * mfu}

    def encoded(seconds: float, tokens: int) -> dict:
        return {"seconds": seconds, "tokens_per_s": tokens / seconds}

    raw = {
        "sizes": asdict(FULL),
        "project": {"classical_small": trained(3.0, 2.0), "echo_small": trained(1.5, 2.5, mfu=0.3),
                    "classical_large_gradcache": trained(1.0, 3.0)},
        "sentence_transformers": {"mnrl_small": trained(1.5, 4.0), "cached_mnrl_large": trained(0.8, 5.0)},
        "gradcache_rss": [{"batch": 16, "peak_rss_gb": 2.0}, {"batch": 256, "peak_rss_gb": 2.5},
                          {"batch": 1024, "peak_rss_gb": 3.2}],
        "encoding": {"short": {"echo_instruct": encoded(2.0, 1000), "classical_instruct": encoded(1.0, 450)},
                     "long": {"echo_instruct": encoded(4.0, 1600), "classical_instruct": encoded(3.0, 1500)},
                     "vs_st_short": {"project_classical": encoded(1.0, 450), "sentence_transformers": encoded(1.5, 400)},
                     "vs_st_long": {"project_classical": encoded(2.0, 900), "sentence_transformers": encoded(2.0, 900)}},
    }
    summary = summarize(raw)
    assert summary["train_speedup_vs_st"] == 2.0 and summary["train_speedup_vs_st_cached"] == 1.25
    assert summary["mfu_bf16"] == 0.3 and summary["echo_rss_vs_st_classical"] == 2.5 / 4.0
    assert summary["gradcache_peak_rss_ratio_1024_vs_16"] == pytest.approx(1.6)
    assert summary["echo_vs_classical_encode_time"] == 2.0 and summary["long_doc_encode_tokens_per_s"] == 400
    assert summary["long_vs_short_encode_tokens_per_s"] == pytest.approx(500 / 400)
    assert summary["encode_speedup_vs_st_short"] == 1.5
    verdicts = {target["key"]: target["passed"] for target in summary["targets"]}
    assert summary["targets"][4]["what"] == "GradCache peak RSS at batch 1024 / at batch 16"
    assert list(verdicts) == [key for key, *_ in TARGETS]
    assert verdicts == {"train_speedup_vs_st": True, "train_speedup_vs_st_cached": False, "mfu_bf16": False,
                        "echo_rss_vs_st_classical": True, "gradcache_peak_rss_ratio_1024_vs_16": False,
                        "echo_vs_classical_encode_time": True, "long_vs_short_encode_tokens_per_s": True}
    failed = {**raw, "sentence_transformers": {**raw["sentence_transformers"], "mnrl_small": {"error": "exit 1"}}}
    assert summarize(failed)["train_speedup_vs_st"] is None  # a failed setting leaves its target unjudged
    assert {t["key"]: t["passed"] for t in summarize(failed)["targets"]}["train_speedup_vs_st"] is None
    no_encoding = summarize({**raw, "encoding": {"error": "exit 1"}})
    assert no_encoding["long_doc_encode_tokens_per_s"] is None and no_encoding["echo_vs_classical_encode_time"] is None


def test_a_setting_is_measured_alone_and_stopped_before_memory_runs_out(tmp_path, monkeypatch) -> None:
    # 200 MB held by the child: its own peak RSS, whatever the parent holds.
    done = run_process([sys.executable, "-c", "block = bytearray(200 * 2**20); print('done')"], tmp_path / "ok.log")
    assert done["returncode"] == 0 and not done["stopped_for_memory"] and done["peak_rss_gb"] > 0.19
    assert (tmp_path / "ok.log").read_text().strip() == "done"

    monkeypatch.setattr(bench.psutil, "virtual_memory", lambda: SimpleNamespace(available=0))
    stopped = run_process([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "stopped.log")
    assert stopped["stopped_for_memory"] and stopped["returncode"] == -9
    assert bench._failure(["cmd"], tmp_path / "stopped.log", stopped)["error"].startswith("stopped at ")
