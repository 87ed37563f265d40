"""Shared fixtures: tiny random models saved once per session, an isolated cache root."""

from __future__ import annotations

import os

import pytest

from tests.tiny_models import build_bpe_tokenizer, build_sentencepiece_tokenizer, save_tiny_llama

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a byte-level BPE tokenizer (SmolLM2-style), as an HF folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-bpe"), build_bpe_tokenizer())


@pytest.fixture(scope="session")
def tiny_sentencepiece_model_dir(tmp_path_factory):
    """A tiny random Llama with a SentencePiece-style tokenizer (Llama-2-style, adds BOS)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-sp"), build_sentencepiece_tokenizer())
