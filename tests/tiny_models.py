"""Tiny, randomly initialised Llama models and offline-built tokenizers for the tests.

Two tokenizer families cover the two ways real tokenizers mark word boundaries:
byte-level BPE (GPT-2, Llama-3, SmolLM2: the space lives inside the next token) and
SentencePiece with a Metaspace prefix (Llama-2, Mistral: every separately tokenized
piece starts a new word).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import yaml
from tokenizers import SentencePieceBPETokenizer, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

CORPUS = [
    "Rewrite the following paragraph: the quick brown fox jumps over the lazy dog.",
    "The rewritten paragraph: a fast dark fox leaps over a sleepy hound.",
    "Instruct: Retrieve semantically similar text\nQuery: where do birds fly in winter?",
    "Document: Many birds migrate south in the winter to find food and warmth.",
    "This sentence : \"hello world\" means in one word: greeting.",
    "Write a paragraph about cats, dogs, rivers, mountains and the sea.",
] * 20
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_bpe_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Byte-level BPE like SmolLM2's: no BOS added, EOS ``</s>``, pad ``<pad>``."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def build_sentencepiece_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE with a Metaspace prefix and a BOS post-processor, like Llama-2's."""
    from tokenizers.processors import TemplateProcessing

    sp = SentencePieceBPETokenizer(add_prefix_space=True)
    sp.train_from_iterator(CORPUS, vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer = sp._tokenizer
    tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                  special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def tiny_llama_config(vocab_size: int, config_class: type = LlamaConfig, **overrides):
    """A 2-layer, 32-wide config of ``config_class`` (Llama, or Mistral for the paper's recipe)."""
    settings = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=True)
    settings.update(overrides)
    return config_class(**settings)


def save_tiny_llama(folder: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0, config_class: type = LlamaConfig) -> Path:
    """Save a random tiny causal LM (Llama unless ``config_class`` says otherwise) and ``tokenizer`` as an HF folder."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(len(tokenizer), config_class))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


WORDS = "cat dog river mountain bird fox hound sea tree stone bridge mill cloud rain snow".split()


def write_tiny_dataset(path: Path, rows: int, seed: int) -> Path:
    """A JSONL training file in this project's format: word-salad queries, their positive, one hard negative."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(rows):
            query = " ".join(rng.choices(WORDS, k=4))
            row = {"query": query, "positive": query + " " + rng.choice(WORDS),
                   "negatives": [" ".join(rng.choices(WORDS, k=5))], "instruction": "Find the matching text"}
            handle.write(json.dumps(row) + "\n")
    return path


def tiny_run_config(folder: Path, model_dir: Path, **train: object) -> Path:
    """``folder/config.yaml``: a 4-step run of the tiny model at ``model_dir`` on two 24-row datasets
    (``a``, ``b``, written beside it) into ``folder/run``, float32, GradCache chunks of 3; ``train``
    keys override the train section."""
    write_tiny_dataset(folder / "a.jsonl", 24, seed=1)
    write_tiny_dataset(folder / "b.jsonl", 24, seed=2)
    config = {
        "output_dir": str(folder / "run"),
        "model": {"name": str(model_dir), "max_length": 48, "precision": "fp32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"mix": None, "dev": None, "datasets": [
            {"name": "a", "path": str(folder / "a.jsonl")},
            {"name": "b", "path": str(folder / "b.jsonl")},
        ]},
        "train": {"max_steps": 4, "batch_size": 4, "chunk_size": 3, "lr": 5e-3, "warmup_steps": 1, **train},
        "wandb": {"mode": "disabled"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
