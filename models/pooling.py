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
