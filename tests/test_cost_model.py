"""The cost model's counts against real models, its FLOPs against a hand count, and its memory scaling."""

from __future__ import annotations

import peft
import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from echo_base import BadInputError
from models.lora import LoraConfig, apply_lora, store_frozen_linear_weights
from models.packing import packed_attention_kwargs, use_packed_attention
from train.cost_model import (
    ModelShape,
    activation_bytes_per_token_per_layer,
    format_plan,
    lora_parameters,
    main,
    model_shape,
    plan_run,
)

# A tiny Llama: GQA (4 query heads share 2 key/value heads) and a SwiGLU MLP wider than the model.
TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=100)
TINY_SHAPE = ModelShape(hidden=64, layers=3, intermediate=160, heads=4, kv_heads=2, head_dim=16, vocab=100)


def tiny_llama(**overrides) -> LlamaModel:
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(**{**TINY, "attn_implementation": "sdpa", **overrides}))


def test_shape_read_from_a_local_config_json(tmp_path):
    LlamaConfig(**TINY).save_pretrained(tmp_path)
    assert model_shape(str(tmp_path)) == TINY_SHAPE


def test_parameter_counts_equal_the_models():
    model = tiny_llama()
    linear_weights = sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))
    assert TINY_SHAPE.matmul_parameters() == linear_weights
    assert TINY_SHAPE.frozen_parameters() == sum(param.numel() for param in model.parameters())


def trainable(model: torch.nn.Module) -> int:
    return sum(param.numel() for param in model.parameters() if param.requires_grad)


def test_lora_parameters_equal_peft_count():
    adapted = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=16, target_modules="all-linear"))
    assert lora_parameters(TINY_SHAPE, LoraConfig(r=16)) == trainable(adapted)


def test_lora_parameters_of_some_layers_and_projections_equal_apply_lora_count():
    lora = LoraConfig(r=4, target_modules=["q_proj", "down_proj"], layers=[1, 2], trainable_eos=True)
    adapted = apply_lora(tiny_llama(), lora, eos_token_id=2)
    assert lora_parameters(TINY_SHAPE, lora) + TINY_SHAPE.hidden == trainable(adapted)  # + the EOS row


def saved_bytes_per_layer(layers: int, sequences: int, bf16: bool, packed: bool, checkpointing: bool) -> float:
    """Bytes autograd keeps for one forward of 32-token sequences, built as train.finetune builds the model."""
    model = peft.get_peft_model(tiny_llama(num_hidden_layers=layers), peft.LoraConfig(r=4, target_modules="all-linear"))
    if bf16:
        store_frozen_linear_weights(model, torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if packed:
        use_packed_attention(model)
        boundaries = torch.arange(0, 32 * sequences + 1, 32, dtype=torch.int32)
        inputs = dict(input_ids=torch.randint(0, TINY["vocab_size"], (1, 32 * sequences)),
                      position_ids=torch.arange(32).repeat(sequences)[None],
                      **packed_attention_kwargs(boundaries, torch.device("cpu")))
    else:
        input_ids = torch.randint(0, TINY["vocab_size"], (sequences, 32))
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, -3:] = 0  # a padded chunk: sdpa gets a mask
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(**inputs)
    return sum(storages.values())


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
def test_activation_bytes_equal_what_autograd_saves(bf16, packed, checkpointing, one_torch_thread):
    def per_layer(sequences: int) -> float:  # a 3-layer model less a 1-layer one: two layers' worth
        return (saved_bytes_per_layer(3, sequences, bf16, packed, checkpointing)
                - saved_bytes_per_layer(1, sequences, bf16, packed, checkpointing)) / 2

    # The slope over tokens leaves out what does not grow with them: the weights, saved by reference.
    per_token = (per_layer(8) - per_layer(4)) / (4 * 32)
    if checkpointing:
        assert per_token == TINY_SHAPE.hidden * 4  # the layer's input: the residual stream is float32
    else:
        assert per_token == activation_bytes_per_token_per_layer(TINY_SHAPE, 4, bf16, packed, sequence_length=32)


# The tiny run's model: 2 layers of 576 matmul weights and 2 norms of 8, a final norm, a 10 x 8 embedding.
TINY_RUN_FROZEN_PARAMETERS = 2 * (576 + 2 * 8) + 8 + 10 * 8
TINY_RUN_LINEAR_PARAMETERS = 2 * 576


@pytest.fixture
def tiny_run(tmp_path) -> str:
    """A run config over a tiny model folder: h=8, 2 layers, f=16, 2 heads of 4 sharing 1 kv head."""
    LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                vocab_size=10).save_pretrained(tmp_path / "model")
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model: {{name: {tmp_path / "model"}, max_length: 16, gradient_checkpointing: true, precision: bf16}}
lora: {{r: 2, target_modules: all-linear}}
data: {{mix: null, dev: null, num_negatives: 1, datasets: [{{name: d, path: d.jsonl}}]}}
train: {{max_steps: 10, batch_size: 8, chunk_size: 2}}
""")
    return str(config)


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_flops_per_step_by_hand(tiny_run, packing):
    plan = plan_run(tiny_run, gpus=2, gpu_peak_tflops=100.0, mfu=0.5, overrides=[f"model.packing={packing}"])
    layer_matmul = 8 * 8 + 8 * 4 + 8 * 4 + 8 * 8 + 3 * 8 * 16  # q, k, v, o, gate/up/down = 576
    lora = 2 * ((8 + 8) + (8 + 4) + (8 + 4) + (8 + 8) + 3 * (8 + 16))  # r x (in + out) per layer = 256
    attention = 4 * 16 * 8 // (2 if packing else 1)  # QK^T and AV per token per layer at s = 16; causal when packed
    forward = 2 * (2 * layer_matmul + attention) + 2 * (2 * lora)  # 2 layers
    backward = 2 * (2 * layer_matmul + 2 * attention) + 4 * (2 * lora)
    tokens = 8 * 3 * 16  # queries x (query, positive, negative) x max_length
    flops = plan["flops_per_step"]
    assert flops["forward and backward"] == tokens * (forward + backward)
    assert flops["GradCache forward without grad"] == flops["gradient checkpointing recompute"] == tokens * forward
    assert flops["total"] == tokens * (3 * forward + backward)
    assert plan["seconds_per_step"] == pytest.approx(flops["total"] / (2 * 100e12 * 0.5))
    assert plan["total_hours"] == pytest.approx(10 * plan["seconds_per_step"] / 3600)


def test_mean_tokens_and_phases(tiny_run):
    full = plan_run(tiny_run, 2, 100.0, 0.5)
    assert plan_run(tiny_run, 2, 100.0, 0.5, mean_tokens=0.5)["tokens_per_step"] == full["tokens_per_step"] / 2
    assert plan_run(tiny_run, 2, 100.0, 0.5, mean_tokens=8)["tokens_per_step"] == full["tokens_per_step"] / 2
    one_forward = plan_run(tiny_run, 2, 100.0, 0.5, overrides=["train.chunk_size=null",
                                                               "model.gradient_checkpointing=false"])["flops_per_step"]
    assert one_forward["GradCache forward without grad"] == one_forward["gradient checkpointing recompute"] == 0
    assert one_forward["total"] == full["flops_per_step"]["forward and backward"]


def test_memory_scales_with_gpus_zero_stage_and_chunk(tiny_run):
    def memory(gpus: int, zero: int, *overrides: str) -> dict[str, int]:
        return plan_run(tiny_run, gpus, 312.0, 0.4, zero, list(overrides))["memory_bytes_per_gpu"]

    one, zero2, zero3 = memory(1, 3), memory(4, 2), memory(4, 3)
    linear, rest = "frozen linear weights (bf16)", "frozen embedding and norms (float32)"
    assert zero2[linear] == one[linear] == TINY_RUN_LINEAR_PARAMETERS * 2
    assert zero2[rest] == one[rest] == (TINY_RUN_FROZEN_PARAMETERS - TINY_RUN_LINEAR_PARAMETERS) * 4
    assert zero3[linear] == pytest.approx(one[linear] / 4, abs=1) and zero3[rest] == pytest.approx(one[rest] / 4, abs=1)
    assert memory(1, 2, "model.precision=fp32")["frozen linear weights (float32)"] == 2 * one[linear]
    assert zero2["AdamW m and v"] == pytest.approx(one["AdamW m and v"] / 4, abs=1)
    assert zero2["LoRA gradients"] == pytest.approx(one["LoRA gradients"] / 4, abs=1)
    assert memory(1, 2, "train.chunk_size=4")["activations of one chunk"] == 2 * one["activations of one chunk"]
    # A token budget of one sequence (16 tokens) caps a chunk of 2 sequences at half.
    assert memory(1, 2, "train.chunk_tokens=16")["activations of one chunk"] == one["activations of one chunk"] / 2
    items = {key: value for key, value in one.items() if key != "total"}
    assert one["total"] == sum(items.values())


def test_the_command_prints_a_table(tiny_run, capsys):
    assert main(["--config", tiny_run, "--gpus", "2", "--gpu-peak-tflops", "312", "--mfu", "0.4"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| quantity | predicted |") and "total time" in table
    assert format_plan(plan_run(tiny_run, 2, 312.0, 0.4)) == table.strip()


@pytest.mark.parametrize(("arguments", "named"), [
    (dict(gpus=0), "--gpus"), (dict(mfu=0.0), "--mfu"), (dict(mfu=1.5), "--mfu"),
    (dict(gpu_peak_tflops=0.0), "--gpu-peak-tflops"), (dict(zero_stage=4), "--zero"),
    (dict(gpus=3), "--gpus"), (dict(mean_tokens=17), "--mean-tokens"),
])
def test_bad_numbers_name_the_argument(tiny_run, arguments, named):
    with pytest.raises(BadInputError, match=named):
        plan_run(tiny_run, **{"gpus": 2, "gpu_peak_tflops": 312.0, "mfu": 0.4, **arguments})


def test_an_unknown_hub_id_asks_for_a_local_folder(tiny_run, capsys):
    with pytest.raises(BadInputError, match="'someone/unknown-7b'.*local model folder"):
        model_shape("someone/unknown-7b")
    assert main(["--config", tiny_run, "--gpus", "2", "--gpu-peak-tflops", "312", "model.name=someone/unknown-7b"]) == 2
    assert capsys.readouterr().err.startswith("error: model.name='someone/unknown-7b'")
