"""FLOPs of a LoRA training step counted from a decoder's sizes and real token lengths, and the matmul peak.

Counted per real (non-pad) token, for a decoder whose base weights are frozen and whose
every linear layer carries a LoRA adapter of rank ``r`` (the benchmark's setting):

* base matmuls, ``N`` = the non-embedding matmul parameters (no LM head: an encoder has
  none): forward ``2N``, backward ``2N`` (the input gradients; frozen weights get no
  weight gradient) = ``4N``;
* LoRA matmuls, ``N_lora`` = r x (in + out) per adapted layer: forward ``2N_lora``,
  backward input and weight gradients ``4N_lora`` = ``6N_lora``;
* attention scores and mixing, per sequence of ``t`` tokens and layer: forward
  ``2 t^2 d_attn`` (QK^T and AV, ``2 t^2 d_attn`` each, halved for causality), training
  three times that (the backward takes the gradients of Q, K and V).

GradCache adds a forward without grad over every token first (``2N + 2N_lora`` per token
plus the attention forward), counted apart as ``recompute``. MFU is achieved FLOP/s
over the machine's measured matmul peak (:func:`matmul_peak`), not a datasheet figure.

Unlike ``train/cost_model.py``, which predicts what padded kernels compute (the full
t x t square of scores, every sequence at ``model.max_length``), this counts the useful
work of the tokens actually embedded: the causal half, each sequence at its own length.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch


def training_flops(matmul_params: int, lora_params: int, layers: int, attention_width: int,
                   lengths: Sequence[int]) -> dict[str, float]:
    """FLOPs of one training pass (forward + backward) over sequences of ``lengths`` real tokens.

    ``matmul_params`` is N, ``lora_params`` N_lora, ``attention_width`` d_attn (heads x
    head_dim) of a decoder of ``layers`` layers. Returns the terms apart (``base``, ``lora``,
    ``attention``), their ``total``, the ``recompute`` a GradCache step adds on top (its
    forward without grad), ``tokens``, and ``total_per_token`` / ``recompute_per_token``.
    Raises ValueError for no tokens.
    """
    tokens = sum(lengths)
    if tokens <= 0:
        raise ValueError("training_flops needs at least one token")
    attention_forward = layers * sum(2 * t * t * attention_width for t in lengths)
    counts = {
        "base": 4 * matmul_params * tokens,
        "lora": 6 * lora_params * tokens,
        "attention": 3 * attention_forward,
    }
    counts["total"] = counts["base"] + counts["lora"] + counts["attention"]
    counts["recompute"] = 2 * (matmul_params + lora_params) * tokens + attention_forward
    counts["tokens"] = tokens
    counts["total_per_token"] = counts["total"] / tokens
    counts["recompute_per_token"] = counts["recompute"] / tokens
    return {key: float(value) for key, value in counts.items()}


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """FLOP/s of the best of ``repeats`` ``size`` x ``size`` matmuls in ``dtype`` (on CPU, with this process's threads)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    torch.matmul(a, b)  # warm-up: kernel choice, page faults
    synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
