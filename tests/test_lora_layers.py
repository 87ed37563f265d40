"""`lora.layers`: only the listed decoder layers get adapters, only they train, and only they
change in the merged export (the default config adapts the top layers only)."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import LlamaModel

import train.finetune as finetune
from models.lora import LoraConfig, apply_lora
from tests.tiny_models import build_bpe_tokenizer, tiny_llama_config, write_tiny_dataset

PROJECTIONS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # every linear layer of a Llama block


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def adapted_modules(model: torch.nn.Module) -> set[str]:
    """Names (relative to the base model) of the modules that carry LoRA A and B matrices."""
    return {name.removeprefix("base_model.model.") for name, module in model.named_modules()
            if hasattr(module, "lora_A") and len(module.lora_A) and len(module.lora_B)}


@pytest.mark.parametrize("num_layers, layers", [(2, [1]), (3, [0, 2])])
def test_apply_lora_adapts_exactly_the_listed_layers_and_a_step_changes_only_them(num_layers, layers):
    tokenizer = build_bpe_tokenizer()
    torch.manual_seed(0)
    model = apply_lora(LlamaModel(tiny_llama_config(len(tokenizer), num_hidden_layers=num_layers)),
                       LoraConfig(r=4, alpha=8, layers=layers), None)
    expected = {f"layers.{layer}.{projection}" for layer in layers for projection in PROJECTIONS}
    assert adapted_modules(model) == expected
    others = [layer for layer in range(num_layers) if layer not in layers]
    assert not any(name.startswith(f"base_model.model.layers.{layer}.") and "lora" in name
                   for layer in others for name, _ in model.named_parameters())

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = tokenizer(["the fox crossed the river", "snow on the mountain"], return_tensors="pt", padding=True)
    hidden = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    (hidden[0, -1] - hidden[1, -1]).pow(2).sum().backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    # lora_B starts at zero, so only B has gradient in the first step; AdamW's decoupled weight
    # decay moves the listed layers' A matrices too. Nothing else moves.
    assert changed == {name for name in before if "lora_" in name
                       and any(name.startswith(f"base_model.model.layers.{layer}.") for layer in layers)}
    assert all(any(f".layers.{layer}.{projection}.lora_B" in name for name in changed)
               for layer in layers for projection in PROJECTIONS)


def test_a_run_with_lora_layers_exports_the_other_layers_bit_for_bit(tmp_path, tiny_model_dir):
    write_tiny_dataset(tmp_path / "a.jsonl", 8, seed=1)
    config = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(tiny_model_dir), "max_length": 48, "precision": "fp32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "layers": [1]},
        "data": {"mix": None, "dev": None, "datasets": [{"name": "a", "path": str(tmp_path / "a.jsonl")}]},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0},
        "wandb": {"mode": "disabled"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    export = finetune.main(["--config", str(tmp_path / "config.yaml")])

    # The tiny model was saved as a causal LM ("model." prefix, tied lm_head); the export is the bare model.
    base = {name.removeprefix("model."): weight for name, weight in load_file(tiny_model_dir / "model.safetensors").items()}
    merged = load_file(export / "model.safetensors")
    assert set(merged) <= set(base) and any(name.startswith("layers.1.") for name in merged)
    for name, weight in merged.items():
        adapted = name.startswith("layers.1.") and any(f".{projection}." in name for projection in PROJECTIONS)
        if adapted:
            assert not torch.equal(weight, base[name]), f"{name}: the adapter was not merged"
        else:
            assert torch.equal(weight, base[name]), f"{name}: changed although layer 1 alone is adapted"
