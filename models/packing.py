"""Padding-free forwards: a batch's prompts packed end to end in one row, no pad token computed.

A packed batch (:func:`pack_prompts`) is one row holding every prompt's tokens back to
back, positions restarting at 0 for each prompt, and the prompt boundaries
``cu_seq_lens`` = [0, len₁, len₁+len₂, …] (FlashAttention's varlen convention). The
linear layers — nearly all of a forward's FLOPs — then see only real tokens, however
unequal the lengths (echo's short queries beside long documents waste most of a padded
batch).

Attention must not cross prompts. :func:`packed_attention_kwargs` passes the boundaries
to the model as ``cu_seq_lens_q/k`` and ``max_length_q/k``, which transformers hands to
every attention call:

* ``flash_attention_2`` (GPU, flash-attn installed) reads them natively (varlen kernel);
* otherwise :func:`use_packed_attention` switches the model to :data:`PACKED_SDPA`,
  registered here. It gathers the prompts into a few right-padded blocks of similar
  length (:func:`length_buckets`) and runs causal sdpa once per block: under a causal mask
  a real token never sees the pad keys after it, so each prompt gets exactly its own
  attention, the pad rows' outputs are dropped, and a prompt costs about its own t², never
  the packed row's. One call per block instead of one per prompt matters on CPU, where
  dozens of small sdpa calls per layer cost more than the attention itself. Unpacked
  (padded) batches still run exactly as ``sdpa``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from echo_base import BadInputError
from models.tokenization import PromptIds

PACKED_SDPA = "echo_packed_sdpa"
# Implementations that honour cu_seq_lens, and those a model can be switched from to PACKED_SDPA.
_VARLEN_NATIVE = ("flash_attention_2", "flash_attention_3")
_SWITCHABLE = ("sdpa", "eager", PACKED_SDPA)


def pack_prompts(prompts: Sequence[PromptIds]) -> dict[str, torch.Tensor]:
    """One packed row: ``input_ids`` and ``position_ids`` [1, tokens], ``pooled_mask`` [tokens], ``cu_seq_lens`` [prompts + 1]."""
    if not prompts:
        raise ValueError("cannot pack an empty list of prompts")
    lengths = torch.tensor([len(prompt) for prompt in prompts])
    cu_seq_lens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    starts = torch.repeat_interleave(cu_seq_lens[:-1].long(), lengths)
    position_ids = torch.arange(int(cu_seq_lens[-1])) - starts
    return {
        "input_ids": torch.tensor([token for prompt in prompts for token in prompt.input_ids]).unsqueeze(0),
        "position_ids": position_ids.unsqueeze(0),
        "pooled_mask": torch.tensor([flag for prompt in prompts for flag in prompt.pooled_mask]),
        "cu_seq_lens": cu_seq_lens,
    }


def packed_attention_kwargs(cu_seq_lens: torch.Tensor, device: torch.device) -> dict[str, object]:
    """The forward kwargs that keep attention within each packed prompt (FlashAttention-2's names)."""
    longest = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    boundaries = cu_seq_lens.to(device)
    return {"cu_seq_lens_q": boundaries, "cu_seq_lens_k": boundaries, "max_length_q": longest, "max_length_k": longest}


def use_packed_attention(model: torch.nn.Module) -> None:
    """Make ``model`` attend within packed prompts: keep a varlen FlashAttention, else switch to :data:`PACKED_SDPA`.

    ``model`` may be wrapped (peft); its first :class:`PreTrainedModel` is switched, which
    switches every layer (they share its config). Raises BadInputError for an attention
    implementation that can honour neither (e.g. flex_attention): pass ``packing=False``.
    """
    base = next((module for module in model.modules() if isinstance(module, PreTrainedModel)), None)
    if base is None:
        raise BadInputError(f"packing needs a transformers model, got {type(model).__name__}: pass packing=False")
    current = base.config._attn_implementation
    if current in _VARLEN_NATIVE or current == PACKED_SDPA:
        return
    if current not in _SWITCHABLE:
        raise BadInputError(f"packing needs sdpa, eager or flash_attention_2 attention, the model uses {current!r}: "
                            f"pass packing=False (model.packing=false)")
    base.set_attn_implementation(PACKED_SDPA)


def length_buckets(lengths: Sequence[int], min_fill: float = 0.5) -> list[list[int]]:
    """Prompt indices grouped for padded attention: longest first, a new group whenever a
    prompt is shorter than ``min_fill`` of its group's longest, so no prompt is padded to
    more than twice its length (four times its attention FLOPs) and most far less."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    buckets: list[list[int]] = []
    for index in order:
        if not buckets or lengths[index] < min_fill * lengths[buckets[-1][0]]:
            buckets.append([])
        buckets[-1].append(index)
    return buckets


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal sdpa within each packed prompt (query [1, heads, tokens, dim]; returns [1, tokens, heads, dim]).

    A batch without ``cu_seq_lens_q`` runs as plain sdpa.
    """
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    boundaries = cu_seq_lens_q.tolist()
    starts, lengths = boundaries[:-1], [end - start for start, end in zip(boundaries[:-1], boundaries[1:])]
    grouped_kv = key.shape[1] != query.shape[1]
    outputs, positions = [], []
    for bucket in length_buckets(lengths):
        offsets = torch.arange(lengths[bucket[0]], device=query.device)
        bucket_starts = torch.tensor([starts[index] for index in bucket], device=query.device)
        bucket_lengths = torch.tensor([lengths[index] for index in bucket], device=query.device)
        real = offsets < bucket_lengths[:, None]  # [prompts, longest]
        # Pad slots read the prompt's first token: finite values that only pad rows attend to.
        token_index = bucket_starts[:, None] + torch.where(real, offsets, 0)
        block = [tensor[0][:, token_index].transpose(0, 1) for tensor in (query, key, value)]  # [prompts, heads, longest, dim]
        attended = F.scaled_dot_product_attention(*block, dropout_p=dropout, scale=scaling, is_causal=True,
                                                  enable_gqa=grouped_kv)
        outputs.append(attended.transpose(1, 2)[real])  # the real tokens' rows: [tokens, heads, dim]
        positions.append(token_index[real])
    # Back to packed order: the buckets' rows hold every token once.
    attended = torch.cat(outputs)[torch.argsort(torch.cat(positions))]
    return attended.unsqueeze(0), None


def _packed_sdpa_mask(*args, **kwargs) -> torch.Tensor | None:
    # A packed batch comes without a 2-D attention mask, and its boundaries travel in the
    # attention kwargs: build no [tokens, tokens] mask for it. A padded batch gets sdpa's.
    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, _packed_sdpa_mask)
