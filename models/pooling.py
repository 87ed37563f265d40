"""Pooling of hidden states into one vector per prompt, correct under either padding side.

:data:`Pooling` is the one pooling type of the project: configs, command lines, the
encoder and the MTEB adapter all take their choices and their check from here.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from echo_base import BadInputError

Pooling = Literal["mean", "last"]
POOLINGS: tuple[Pooling, ...] = get_args(Pooling)


def check_pooling(name: object) -> Pooling:
    """Return ``name`` as a :data:`Pooling`; raises BadInputError listing the choices otherwise."""
    if name not in POOLINGS:
        raise BadInputError(f"pooling must be one of {', '.join(POOLINGS)}, got {name!r}")
    return name  # type: ignore[return-value]


def pool(hidden_states: torch.Tensor, pooled_mask: torch.Tensor, attention_mask: torch.Tensor, method: Pooling) -> torch.Tensor:
    """Pool ``hidden_states`` [batch, seq, hidden] and L2-normalize.

    ``mean`` averages the positions of ``pooled_mask`` (echo's second copy, plus EOS
    when appended). ``last`` takes the last real token of each row — the appended EOS,
    or the template's final token for PromptEOL — found from ``attention_mask``, so it
    is right under left and right padding alike. Pooling runs in float32 whatever the
    compute dtype, so bf16 states are averaged without bf16 rounding.
    """
    hidden_states = hidden_states.float()
    if check_pooling(method) == "mean":
        weights = pooled_mask.to(hidden_states.dtype).unsqueeze(-1)
        pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    else:
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (positions * attention_mask).argmax(dim=1)
        pooled = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
    return F.normalize(pooled, dim=-1)


def pool_packed(hidden_states: torch.Tensor, pooled_mask: torch.Tensor, cu_seq_lens: torch.Tensor, method: Pooling) -> torch.Tensor:
    """Pool a packed row's ``hidden_states`` [tokens, hidden] per prompt, by sequence index, and L2-normalize.

    The prompts are the spans between consecutive ``cu_seq_lens`` (:mod:`models.packing`).
    ``mean`` averages each prompt's ``pooled_mask`` positions, ``last`` takes each prompt's
    last token: the same vectors :func:`pool` gives the padded batch, in float32.
    """
    hidden_states = hidden_states.float()
    if check_pooling(method) == "mean":
        lengths = (cu_seq_lens[1:] - cu_seq_lens[:-1]).long()
        sequence_index = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
        weights = pooled_mask.to(hidden_states.dtype)
        sums = hidden_states.new_zeros(len(lengths), hidden_states.shape[1]).index_add_(
            0, sequence_index, hidden_states * weights.unsqueeze(-1))
        counts = weights.new_zeros(len(lengths)).index_add_(0, sequence_index, weights)
        pooled = sums / counts.clamp(min=1.0).unsqueeze(-1)
    else:
        pooled = hidden_states[cu_seq_lens[1:].long() - 1]
    return F.normalize(pooled, dim=-1)
