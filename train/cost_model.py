"""Per-GPU memory and wall time of a training run, predicted from its config alone.

``python -m train.cost_model --config CONFIG --gpus 4 --gpu-peak-tflops 312 --mfu 0.4 [--zero 2]``

Notation: hidden h, layers L, intermediate f, query width a = heads x head_dim, key/value
width kv = kv_heads x head_dim, LoRA rank r, s tokens per sequence. N = L x (2ha + 2h kv +
3hf) is the decoder's matmul parameters (no embedding; the encoder is ``AutoModel``, which
has no LM head). N_lora = r x (in + out) summed over the adapted projections.

FLOPs per token (a multiply-add is 2 FLOPs):

* forward 2N + 2 N_lora + attention: QK^T and AV, 4 L s a over the full s x s square for a
  padded chunk (sdpa with a padding mask computes every score), half that packed
  (``model.packing``: each prompt attends causally to itself, and the kernel skips the
  upper triangle);
* backward of LoRA on a frozen base: input gradients 2N + 2 N_lora, LoRA weight gradients
  2 N_lora, attention twice its forward; no base weight gradients. It runs through every
  layer when gradient checkpointing (inputs made to require grad) or the trainable EOS row
  needs it, else only down to the lowest adapted layer (``lora.layers``);
* GradCache (``train.chunk_size`` or ``train.chunk_tokens`` set) adds a forward without
  grad, and gradient checkpointing adds the recompute: one more forward each.

Tokens per step = batch_size x accumulation x (2 + num_negatives) x s, with s =
``model.max_length`` (an upper bound) or ``mean_tokens``: the mean real length when packed,
the mean padded length when padded. Time = FLOPs / (gpus x peak x mfu). The no-grad forward
and the recompute are counted, so ``mfu`` is strictly the hardware FLOPs utilisation; the
attention kernel's own backward recompute and communication are left inside it.

Memory per GPU. Frozen linear weights are bf16 under ``model.precision=bf16`` (matmuls under
bf16 autocast), the embedding and norms float32 (``models.lora.store_frozen_linear_weights``);
everything is float32 under fp32. LoRA weights, their
gradients and AdamW's m and v are float32 (DeepSpeed's bf16 mode is off in
configs/deepspeed). ZeRO-1 shards the optimizer state over the GPUs, ZeRO-2 also the
gradients, ZeRO-3 also the weights (gathering one layer at a time). Activations are one
GradCache chunk's: chunk_size sequences (the whole local batch without a cap) of
``model.max_length`` tokens, at most max(chunk_tokens, max_length) tokens. Per token, a
layer that backpropagates keeps, with every projection adapted (all-linear; fewer keep a
little less), in bytes (e = 2 under bf16, 4 in float32):

    2 (4h + 4)              the two RMSNorm inputs, upcast to float32, and their rsqrt
  + (5h + a + f) e          each projection's bf16 input for its lora_A (peft hands it over in
                            float32, autocast casts it back, per call); in float32,
                            (2h + f) e: q/k/v share one input and gate/up another, plus a e
                            when packed (o_proj's input is a fresh copy, not sdpa's output)
  + 7 r e                   each lora_A output
  + (2a + 2 kv') e          sdpa's q, k, v and output, kv' = kv packed and a padded (with a mask,
    + 4 heads + [s e]       k and v come repeated to every head), its log-sum-exp, and, padded,
                            the mask cast to e bytes; never the s x s scores
  + 3 f e                   gate output, SiLU output, up output

(Korthikanti et al. 2022's accounting, redone for SwiGLU, GQA, LoRA and autocast; it equals
what autograd saves for a tiny LoRA Llama on CPU, tests/test_cost_model.py.) With gradient
checkpointing a layer keeps only its input, h float32 (the residual stream), plus one layer
recomputed in full. The loss adds the gathered embeddings, batch_size x (2 + num_negatives)
x h float32 and their gradients, and the logits, local queries x documents float32 and their
gradients. Not modelled: autocast's bf16 copies of the LoRA weights (2 N_lora bytes at most),
the CUDA context, allocator fragmentation and communication buffers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from echo_base import BadInputError
from models.lora import LoraConfig
from train.config import RunConfig, load_config

GIB = 2**30
FLOAT32_BYTES, BFLOAT16_BYTES = 4, 2
# Packed sdpa (models/packing.py) keeps per token the int64 gather index into its padded blocks,
# their bool real-token mask and the int64 permutation back to packed order.
PACKED_INDEX_BYTES = 8 + 1 + 8
ADAMW_STATE_BYTES = 2 * FLOAT32_BYTES  # m and v
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama/Mistral decoder that cost depends on."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def query_width(self) -> int:
        return self.heads * self.head_dim

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection of one decoder layer."""
        h, a, kv, f = self.hidden, self.query_width, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, a), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (a, h),
                "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    def layer_matmul_parameters(self) -> int:
        return sum(fan_in * fan_out for fan_in, fan_out in self.projection_shapes().values())

    def matmul_parameters(self) -> int:
        """N: the decoder's matmul weights, no embedding and no LM head."""
        return self.layers * self.layer_matmul_parameters()

    def frozen_parameters(self) -> int:
        """Every base weight the encoder loads: matmuls, two RMSNorms a layer, the final norm, the input embedding."""
        return self.matmul_parameters() + (2 * self.layers + 1) * self.hidden + self.vocab * self.hidden


_MISTRAL_7B = ModelShape(hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, head_dim=128, vocab=32000)
_SMOLLM2_135M = ModelShape(hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)
# Shapes of hub ids (and registry names) known without their config.json, so a plan needs no download.
KNOWN_SHAPES = {
    "mistralai/Mistral-7B-Instruct-v0.1": _MISTRAL_7B,
    "mistralai/Mistral-7B-v0.1": _MISTRAL_7B,
    "smollm2-135m-instruct": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
}


def model_shape(name: str) -> ModelShape:
    """The shape from ``name/config.json`` when ``name`` is a local model folder, else from :data:`KNOWN_SHAPES`.

    Registry names are in the table, so a plan never converts a GGUF just to read its sizes.
    Raises BadInputError for any other name, or a config.json without a Llama-style shape.
    """
    config_file = Path(name) / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
            heads = config["num_attention_heads"]
            return ModelShape(hidden=config["hidden_size"], layers=config["num_hidden_layers"],
                              intermediate=config["intermediate_size"], heads=heads,
                              kv_heads=config.get("num_key_value_heads") or heads,
                              head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                              vocab=config["vocab_size"])
        except (ValueError, KeyError) as error:  # JSONDecodeError is a ValueError
            raise BadInputError(f"{config_file}: not a Llama/Mistral-style config ({error!r})") from None
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    raise BadInputError(f"model.name={name!r}: its shape is unknown offline; pass a local model folder "
                        f"(with config.json) or one of {sorted(KNOWN_SHAPES)}")


def adapted_projections(lora: LoraConfig) -> list[str]:
    """The projections of a layer that carry LoRA; raises BadInputError for a target that is none of them."""
    if lora.target_modules == "all-linear":
        return list(PROJECTIONS)
    unknown = sorted(set(lora.target_modules) - set(PROJECTIONS))
    if unknown:
        raise BadInputError(f"lora.target_modules: the cost model knows only {list(PROJECTIONS)}, got {unknown}")
    return [name for name in PROJECTIONS if name in lora.target_modules]


def lora_parameters(shape: ModelShape, lora: LoraConfig) -> int:
    """LoRA A and B weights over the adapted projections and layers (not the trainable EOS row)."""
    shapes = shape.projection_shapes()
    per_layer = sum(lora.r * (shapes[name][0] + shapes[name][1]) for name in adapted_projections(lora))
    return per_layer * (len(lora.layers) if lora.layers is not None else shape.layers)


def activation_bytes_per_token_per_layer(shape: ModelShape, lora_rank: int, bf16: bool, packed: bool,
                                         sequence_length: int) -> int:
    """What autograd keeps per token in one backpropagating decoder layer (module docstring), all-linear LoRA."""
    h, a, f = shape.hidden, shape.query_width, shape.intermediate
    e = BFLOAT16_BYTES if bf16 else FLOAT32_BYTES
    saved_kv_width = shape.kv_heads * shape.head_dim if packed else a
    norms = 2 * (FLOAT32_BYTES * h + FLOAT32_BYTES)
    projection_inputs = (5 * h + a + f) * e if bf16 else (2 * h + f + (a if packed else 0)) * e
    lora_a_outputs = len(PROJECTIONS) * lora_rank * e
    attention = (2 * a + 2 * saved_kv_width) * e + FLOAT32_BYTES * shape.heads + (
        PACKED_INDEX_BYTES if packed else sequence_length * e)
    swiglu = 3 * f * e
    return norms + projection_inputs + lora_a_outputs + attention + swiglu


def tokens_per_sequence(max_length: int, mean_tokens: float | None) -> float:
    """``mean_tokens`` as a token count: a fraction of ``max_length`` when <= 1, a count otherwise; None = max_length."""
    if mean_tokens is None:
        return float(max_length)
    if not 0 < mean_tokens <= max_length:
        raise BadInputError(f"--mean-tokens must be a fraction in (0, 1] or a count up to model.max_length={max_length}, "
                            f"got {mean_tokens}")
    return mean_tokens * max_length if mean_tokens <= 1 else float(mean_tokens)


def _check_arguments(gpus: int, gpu_peak_tflops: float, mfu: float, zero_stage: int) -> None:
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise BadInputError(f"--gpus must be an integer >= 1, got {gpus!r}")
    if not gpu_peak_tflops > 0:
        raise BadInputError(f"--gpu-peak-tflops must be > 0, got {gpu_peak_tflops!r}")
    if not 0 < mfu <= 1:
        raise BadInputError(f"--mfu must be in (0, 1], got {mfu!r}")
    if zero_stage not in (0, 1, 2, 3):
        raise BadInputError(f"--zero must be 0 (plain DDP), 1, 2 or 3, got {zero_stage!r}")


def backward_layers(config: RunConfig, shape: ModelShape) -> int:
    """Decoder layers the backward runs through: all, unless nothing below the lowest adapted layer needs a gradient."""
    lora = config.lora
    needs_input_gradients = config.model.gradient_checkpointing or lora.trainable_eos or lora.layers is None
    return shape.layers if needs_input_gradients else shape.layers - min(lora.layers)


def uses_grad_cache(config: RunConfig) -> bool:
    return config.train.chunk_size is not None or config.train.chunk_tokens is not None


def flops_per_step(config: RunConfig, shape: ModelShape, sequence_length: float) -> dict[str, float]:
    """FLOPs of one optimizer step, all GPUs together, by phase (module docstring)."""
    lora, train = config.lora, config.train
    layer_matmul, n_lora = shape.layer_matmul_parameters(), lora_parameters(shape, lora)
    # QK^T and AV per token per layer; causal packed prompts skip half the square.
    attention_forward = (2 if config.model.packing else 4) * sequence_length * shape.query_width
    forward = shape.layers * (2 * layer_matmul + attention_forward) + 2 * n_lora
    backward = backward_layers(config, shape) * (2 * layer_matmul + 2 * attention_forward) + 4 * n_lora
    tokens = train.batch_size * train.gradient_accumulation_steps * (2 + config.data.num_negatives) * sequence_length
    phases = {
        "forward and backward": tokens * (forward + backward),
        "GradCache forward without grad": tokens * forward if uses_grad_cache(config) else 0.0,
        "gradient checkpointing recompute": tokens * forward if config.model.gradient_checkpointing else 0.0,
    }
    return {**phases, "total": sum(phases.values())}


def memory_per_gpu(config: RunConfig, shape: ModelShape, gpus: int, zero_stage: int) -> dict[str, int]:
    """Bytes each GPU holds at the peak of a step, by item (module docstring)."""
    lora, train, model = config.lora, config.train, config.model
    bf16 = model.precision == "bf16"
    linear_weight_bytes = BFLOAT16_BYTES if bf16 else FLOAT32_BYTES
    trainable = lora_parameters(shape, lora) + (shape.hidden if lora.trainable_eos else 0)
    local_queries = train.batch_size // gpus
    local_documents = local_queries * (1 + config.data.num_negatives)
    # Queries and documents are chunked apart, so a chunk holds at most the local documents.
    chunk_tokens = min(train.chunk_size or local_documents, local_documents) * model.max_length
    if train.chunk_tokens is not None:  # a budget; a longer sequence goes alone
        chunk_tokens = min(chunk_tokens, max(train.chunk_tokens, model.max_length))
    per_layer = activation_bytes_per_token_per_layer(shape, lora.r, bf16, model.packing, model.max_length)
    if model.gradient_checkpointing:
        activations = chunk_tokens * (shape.layers * FLOAT32_BYTES * shape.hidden + per_layer)
    else:
        activations = chunk_tokens * backward_layers(config, shape) * per_layer
    sequences = train.batch_size * (2 + config.data.num_negatives)  # one contrastive batch, gathered on every GPU
    # This GPU's queries against every document (and, with symmetric_loss, its positives against every query).
    logit_columns = train.batch_size * (1 + config.data.num_negatives) + (train.batch_size if train.symmetric_loss else 0)
    items = {
        f"frozen linear weights ({'bf16' if bf16 else 'float32'})":
            shape.matmul_parameters() * linear_weight_bytes // (gpus if zero_stage == 3 else 1),
        "frozen embedding and norms (float32)":
            (shape.frozen_parameters() - shape.matmul_parameters()) * FLOAT32_BYTES // (gpus if zero_stage == 3 else 1),
        "ZeRO-3 gathered layer": shape.layer_matmul_parameters() * linear_weight_bytes if zero_stage == 3 else 0,
        "LoRA weights": trainable * FLOAT32_BYTES // (gpus if zero_stage == 3 else 1),
        "LoRA gradients": trainable * FLOAT32_BYTES // (gpus if zero_stage >= 2 else 1),
        "AdamW m and v": trainable * ADAMW_STATE_BYTES // (gpus if zero_stage >= 1 else 1),
        "activations of one chunk": activations,
        "gathered embeddings and gradients": 2 * sequences * shape.hidden * FLOAT32_BYTES,
        "InfoNCE logits and gradients": 2 * local_queries * logit_columns * FLOAT32_BYTES,
    }
    return {**items, "total": sum(items.values())}


def plan_run(config_path: str, gpus: int, gpu_peak_tflops: float, mfu: float, zero_stage: int = 2,
             overrides: list[str] | None = None, mean_tokens: float | None = None) -> dict:
    """The predicted per-GPU memory and wall time of the run ``config_path`` describes, as plain JSON-able values.

    Raises BadInputError (ConfigError included) naming the bad argument or config key.
    """
    _check_arguments(gpus, gpu_peak_tflops, mfu, zero_stage)
    config = load_config(config_path, overrides or [])
    if config.train.batch_size % gpus:
        raise BadInputError(f"--gpus {gpus} must divide train.batch_size={config.train.batch_size}")
    shape = model_shape(config.model.name)
    sequence_length = tokens_per_sequence(config.model.max_length, mean_tokens)
    flops = flops_per_step(config, shape, sequence_length)
    seconds_per_step = flops["total"] / (gpus * gpu_peak_tflops * 1e12 * mfu)
    return {
        "config": str(config_path), "model": config.model.name, "shape": asdict(shape),
        "precision": config.model.precision, "packing": config.model.packing,
        "gpus": gpus, "gpu_peak_tflops": gpu_peak_tflops, "mfu": mfu, "zero_stage": zero_stage,
        "matmul_parameters": shape.matmul_parameters(), "frozen_parameters": shape.frozen_parameters(),
        "lora_parameters": lora_parameters(shape, config.lora),
        "steps": config.train.max_steps, "tokens_per_sequence": sequence_length,
        "tokens_per_step": config.train.batch_size * config.train.gradient_accumulation_steps
        * (2 + config.data.num_negatives) * sequence_length,
        "flops_per_step": flops, "memory_bytes_per_gpu": memory_per_gpu(config, shape, gpus, zero_stage),
        "seconds_per_step": seconds_per_step, "total_hours": config.train.max_steps * seconds_per_step / 3600,
    }


def format_plan(plan: dict) -> str:
    """The plan as a Markdown table: the run's totals, then memory per GPU item by item (zero items left out)."""
    rows = [
        ("model", f"{plan['model']} (N = {plan['matmul_parameters'] / 1e9:.3g}B matmul, "
                  f"LoRA {plan['lora_parameters'] / 1e6:.3g}M; {plan['precision']}, "
                  f"{'packed' if plan['packing'] else 'padded'})"),
        ("GPUs x peak x MFU", f"{plan['gpus']} x {plan['gpu_peak_tflops']:g} TFLOP/s x {plan['mfu']:g}, "
                              f"ZeRO-{plan['zero_stage']}"),
        ("tokens per step", f"{plan['tokens_per_step']:,.0f} ({plan['tokens_per_sequence']:g} per sequence)"),
        *((f"PFLOP per step: {phase}", f"{flops / 1e15:.3g}") for phase, flops in plan["flops_per_step"].items() if flops),
        ("seconds per step", f"{plan['seconds_per_step']:.1f}"),
        ("total time", f"{plan['total_hours']:.1f} h ({plan['steps']} steps)"),
        *((f"GiB per GPU: {item}", f"{size / GIB:.2f}") for item, size in plan["memory_bytes_per_gpu"].items() if size),
    ]
    return "\n".join(["| quantity | predicted |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: prints the plan's table; returns 2 with one line on stderr on bad input."""
    parser = argparse.ArgumentParser(prog="python -m train.cost_model", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a run config (YAML)")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs (processes) of the run")
    parser.add_argument("--gpu-peak-tflops", type=float, required=True, help="dense bf16 peak of one GPU, TFLOP/s")
    parser.add_argument("--mfu", type=float, default=0.4, help="achieved fraction of the peak (default: 0.4)")
    parser.add_argument("--zero", type=int, default=2, help="DeepSpeed ZeRO stage, 0 = plain DDP (default: 2)")
    parser.add_argument("--mean-tokens", type=float, help="mean padded tokens per sequence: a fraction of "
                        "model.max_length (<= 1) or a count (default: model.max_length)")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = parser.parse_args(argv)
    try:
        plan = plan_run(args.config, args.gpus, args.gpu_peak_tflops, args.mfu, args.zero, args.overrides,
                        args.mean_tokens)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
