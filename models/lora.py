"""LoRA adapters (peft) on the encoder's base model, and their weights as one flat dict.

The optional trainable EOS embedding is peft's ``trainable_token_indices``: only the EOS
row of the input embedding trains (the paper's last-token recipe), and ``merge_and_unload``
folds it into the embedding matrix like any LoRA delta.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel


@dataclass(frozen=True)
class LoraSpec:
    """Everything needed to rebuild the same adapters on a fresh base model (export does)."""

    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    layers: list[int] | None = None
    trainable_token_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def apply_lora(model: PreTrainedModel, spec: LoraSpec) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; only adapter (and chosen token) weights train."""
    target_modules, layers_pattern = spec.target_modules, None
    if spec.layers is not None:
        # peft's layers_to_transform needs module names (every linear layer but an LM head) and
        # the name of the decoder-layer list ("layers" in Llama, "h" in GPT-2), found here.
        if target_modules == "all-linear":
            target_modules = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                                     if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")})
        layers_pattern = next(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if isinstance(module, torch.nn.ModuleList) and len(module) == model.config.num_hidden_layers)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=target_modules,
        layers_to_transform=spec.layers,
        layers_pattern=layers_pattern,
        trainable_token_indices=spec.trainable_token_ids or None,
        bias="none",
    )
    return get_peft_model(model, config)


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of every trainable parameter, by name; complete under DeepSpeed ZeRO-3.

    Under ZeRO-3 each rank holds only a shard (``param.data`` is empty), which is how
    other frameworks end up saving empty adapters: the parameters are gathered first.
    Every rank must call this (the gather is collective).
    """
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if any(hasattr(param, "ds_id") for _, param in named):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param for _, param in named], modifier_rank=None):
            return {name: param.detach().to("cpu", copy=True) for name, param in named}
    return {name: param.detach().to("cpu", copy=True) for name, param in named}


def load_trainable_state(model: PeftModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Load adapter weights saved by :func:`trainable_state_dict`, checking the key sets exactly.

    Raises ValueError naming ``source`` when a trainable weight is missing or an
    unexpected one is present (a non-strict load would otherwise pass silently).
    """
    expected = {name for name, param in model.named_parameters() if param.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{source}: adapter weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
