"""configs/paper/ runs as written on a tiny random model of the paper's architecture (Mistral),
reading E5 echo-data files, with GradCache, gradient checkpointing, last-token pooling and a
trainable EOS embedding — only the model, data size and step count are scaled down."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from transformers import MistralConfig

import train.finetune as finetune
from models import EchoEncoder
from train.config import load_config
from tests.tiny_models import build_bpe_tokenizer, save_tiny_llama

PAPER_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.yaml"))
WORDS = "river stone bird cloud sea tree fox snow mill bridge".split()


@pytest.mark.parametrize("config_path", PAPER_CONFIGS, ids=[path.stem for path in PAPER_CONFIGS])
def test_paper_recipe_runs_on_a_tiny_mistral(config_path, tmp_path, monkeypatch):
    config = load_config(config_path)
    assert (config.lora.r, config.lora.alpha, config.train.lr, config.train.temperature) == (16, 16, 8e-4, 0.02)
    assert (config.train.batch_size, config.train.max_steps, config.model.pooling) == (2048, 720, "last")
    assert config.lora.trainable_eos and len(config.data.datasets) == 14

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # the config's data paths are relative: echo-data/<name>.jsonl
    rng = random.Random(0)
    (tmp_path / "echo-data").mkdir()
    for spec in config.data.datasets:
        with open(tmp_path / spec.path, "w") as handle:
            for _ in range(8):
                query = " ".join(rng.choices(WORDS, k=4))
                row = {"query": query, "positive": query + " again", "negative": " ".join(rng.choices(WORDS, k=4))}
                handle.write(json.dumps(row) + "\n")
    model_dir = save_tiny_llama(tmp_path / "tiny-mistral", build_bpe_tokenizer(), config_class=MistralConfig)
    export = finetune.main(["--config", str(config_path), f"output_dir={tmp_path / 'run'}", f"model.name={model_dir}",
                            "model.max_length=96", "model.precision=fp32", "train.max_steps=2", "train.batch_size=4",
                            "train.chunk_size=3", "train.warmup_steps=1", "train.save_every=1", "wandb.mode=disabled"])
    encoder = EchoEncoder.from_pretrained(str(export), dtype="float32")
    assert (encoder.template_set, encoder.pooling, encoder.model.config.model_type) == (config.model.template_set, "last", "mistral")
    vectors = encoder.encode(["a river of stone"], kind="query", instruction=config.data.datasets[0].instruction)
    assert vectors.shape == (1, 32) and abs(float((vectors**2).sum()) - 1) < 1e-5
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "train/loss" in r] == [1, 2]


def test_the_classical_recipe_is_the_echo_recipe_with_another_template_set():
    echo, classical = (load_config(path).model_dump(mode="json") for path in
                       (PAPER_CONFIGS[1], PAPER_CONFIGS[0]))
    assert (echo["model"].pop("template_set"), classical["model"].pop("template_set")) == ("echo_instruct",
                                                                                          "classical_instruct")
    assert echo["wandb"].pop("tags") == ["paper", "echo"] and classical["wandb"].pop("tags") == ["paper", "classical"]
    assert echo.pop("output_dir").endswith("echo") and classical.pop("output_dir").endswith("classical")
    assert echo == classical
