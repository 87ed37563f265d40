"""Shared fixtures: tiny random models saved once per session, and a cache root of the tests' own.

The cache: the project caches what it derives (converted models, prepared data, downloads)
under ``ECHO_CACHE``, else ``~/.cache/echo-embeddings``. A test session must not write into
the user's own cache, so when ``ECHO_CACHE`` is not set the session sets it to
``<repo>/.test-cache`` (git-ignored, kept between sessions so SmolLM2 is converted once).
A cache set explicitly (CI sets its own in ``.ci/run``) is used as given. This runs when
pytest loads this file, before any test module is imported; ``echo_base.cache_dir`` reads
the variable at call time, and subprocesses (``launch.sh`` runs) inherit it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE = REPO / ".test-cache"


def isolate_cache(environ: MutableMapping[str, str]) -> Path:
    """Set ``ECHO_CACHE`` to :data:`TEST_CACHE` unless it is already set; return the cache root in use."""
    environ.setdefault("ECHO_CACHE", str(TEST_CACHE))
    return Path(environ["ECHO_CACHE"])


# Whether the user (or CI) chose the cache root: then it may lie anywhere, their home cache included.
ECHO_CACHE_SET_BY_USER = "ECHO_CACHE" in os.environ
isolate_cache(os.environ)
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402  (after the environment is set: nothing below may see the user's cache)
import torch  # noqa: E402

from tests.tiny_models import build_bpe_tokenizer, build_sentencepiece_tokenizer, save_tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a byte-level BPE tokenizer (SmolLM2-style), as an HF folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-bpe"), build_bpe_tokenizer())


@pytest.fixture(scope="session")
def tiny_sentencepiece_model_dir(tmp_path_factory):
    """A tiny random Llama with a SentencePiece-style tokenizer (Llama-2-style, adds BOS)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-sp"), build_sentencepiece_tokenizer())


@pytest.fixture()
def one_torch_thread(monkeypatch):
    """One thread for tiny models: they gain nothing from more, and on shared cores OpenMP
    spin-waits make them many times slower. Runs of train/finetune.py read ECHO_CPU_THREADS."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("ECHO_CPU_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
