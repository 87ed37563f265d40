"""LoRA adapters (peft) on the encoder's base model, and their weights as one flat dict.

The optional trainable EOS embedding is peft's ``trainable_token_indices``: only the EOS
row of the input embedding trains (the paper's last-token recipe), and ``merge_and_unload``
folds it into the embedding matrix like any LoRA delta.
"""

from __future__ import annotations

from typing import Literal

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel

from echo_base import BadInputError, NonFiniteError, shown
from models.zero3 import is_zero3_partitioned


class LoraConfig(BaseModel):
    """The adapters, declared once: the ``lora`` section of a run config and what a checkpoint
    records to rebuild the same adapters on a fresh base model (export does)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch input.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules to adapt; 'all-linear' = every attention and MLP projection.")
    layers: list[int] | None = Field(None, description="Adapt only these decoder layers (None = all). Adapting only the top layers skips most of the backward pass.")
    trainable_eos: bool = Field(False, description="Train the EOS token's input embedding (the paper's last-token recipe).")


def apply_lora(model: PreTrainedModel, config: LoraConfig, eos_token_id: int | None) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; only adapter (and, with ``trainable_eos``, the EOS row) weights train.

    Raises BadInputError when ``config.trainable_eos`` is set and ``eos_token_id`` is None,
    and what :func:`check_lora` raises.
    """
    if config.trainable_eos and eos_token_id is None:
        raise BadInputError("lora.trainable_eos needs a tokenizer with an eos_token")
    check_lora(config, model)
    target_modules, layers_pattern = config.target_modules, None
    if config.layers is not None:
        # peft's layers_to_transform needs module names (every linear layer but an LM head) and
        # the name of the decoder-layer list ("layers" in Llama, "h" in GPT-2), found here.
        if target_modules == "all-linear":
            target_modules = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                                     if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")})
        layers_pattern = next(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if isinstance(module, torch.nn.ModuleList) and len(module) == model.config.num_hidden_layers)
    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=target_modules,
        layers_to_transform=config.layers,
        layers_pattern=layers_pattern,
        trainable_token_indices=[eos_token_id] if config.trainable_eos else None,
        bias="none",
    )
    peft_model = get_peft_model(model, peft_config)
    # Trainable weights and their optimizer state stay float32 over a bf16 base: bf16 updates
    # would round away most of each small step (peft keeps LoRA float32; the EOS delta too).
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return peft_model


def check_lora(config: LoraConfig, model: torch.nn.Module) -> None:
    """Raise BadInputError naming the key when ``config.layers`` names a decoder layer ``model``
    lacks, or a name in ``config.target_modules`` matches no module (peft would adapt the
    others and drop it silently). ``model`` may be a skeleton on the meta device.
    """
    layer_count = model.config.num_hidden_layers
    outside = [layer for layer in config.layers or [] if not 0 <= layer < layer_count]
    if outside:
        raise BadInputError(f"lora.layers: {shown(outside)} outside the model's decoder layers 0..{layer_count - 1}")
    if config.target_modules == "all-linear":
        return
    names = [name for name, _ in model.named_modules()]
    # peft's rule for a list of names: a module matches a name it equals or ends with after a dot.
    unmatched = [target for target in config.target_modules
                 if not any(name == target or name.endswith("." + target) for name in names)]
    if unmatched:
        raise BadInputError(f"lora.target_modules: {shown(unmatched)} match no module of the model")


def store_frozen_linear_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store the weights of every frozen linear layer in ``dtype`` (bf16 for bf16 training), in place.

    Under autocast each matmul rounds a float32 weight to bf16 on every call (autocast
    caches casts of trainable leaves only), so a frozen weight stored in bf16 gives the
    same products without the per-op cast. Only linear layers: embeddings, norms and the
    residual stream stay float32, exactly as under autocast, and LoRA weights train in float32.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
            module.to(dtype)


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of every trainable parameter, by name; complete under DeepSpeed ZeRO-3.

    Under ZeRO-3 each rank holds only a shard (``param.data`` is empty), which is how
    other frameworks end up saving empty adapters: the parameters are gathered first.
    Every rank must call this (the gather is collective).
    """
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if is_zero3_partitioned(model):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param for _, param in named], modifier_rank=None):
            return {name: param.detach().to("cpu", copy=True) for name, param in named}
    return {name: param.detach().to("cpu", copy=True) for name, param in named}


def check_finite_weights(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise NonFiniteError naming the first weight in ``state`` that holds a NaN or an infinity.

    Every save of trainable weights (checkpoint, export) calls this first, so none ever
    holds a non-finite weight; ``what`` names the save in the message.
    """
    for name, weight in state.items():
        if not torch.isfinite(weight).all():
            raise NonFiniteError(f"{what}: refused: weight {name} holds non-finite values "
                                 f"({int((~torch.isfinite(weight)).sum())} of {weight.numel()})")


def load_trainable_state(model: PeftModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Load adapter weights saved by :func:`trainable_state_dict`, checking the key sets exactly.

    Raises BadInputError naming ``source`` when a trainable weight is missing or an
    unexpected one is present (a non-strict load would otherwise pass silently).
    """
    expected = {name for name, param in model.named_parameters() if param.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise BadInputError(f"{source}: adapter weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
