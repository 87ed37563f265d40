"""Contrastive LoRA fine-tuning of a causal LM into an echo embedding model.

    accelerate launch train/finetune.py --config configs/echo_lora.yaml [section.key=value ...]

Reads top to bottom: config -> data -> model + LoRA -> loss, optimizer, scheduler ->
resume -> train loop (GradCache steps) -> final checkpoint -> export. The last line it
prints is ``export: <path of the merged model>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch train/finetune.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from transformers import get_scheduler

from train.collate import collate_examples, pad_in_chunks
from data.formats import TrainingExample, read_examples
from echo_base import UsageError
from data.prepare import prepare_training_mix
from data.sampler import SingleDatasetBatchSampler, shard
from evaluation.tasks import evaluate_task, resolve_tasks
from models import EchoEncoder, __version__
from models.export import export_merged, export_spec
from models.lora import LoraSpec, apply_lora, trainable_state_dict
from train.accelerator import fill_deepspeed_config, make_accelerator, model_build_context
from train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from train.config import ConfigError, RunConfig, config_to_yaml, load_config
from train.grad_cache import grad_cache_step, make_chunk_backward, single_forward_step
from train.loss import InfoNCELoss, text_key
from train.tracking import RunLogger, peak_memory_gb


def parse_args(argv: list[str]) -> RunConfig:
    parser = argparse.ArgumentParser(prog="train/finetune.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run config (train/config.py documents every key)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=3")
    args = parser.parse_args(argv)
    bad = [item for item in args.overrides if "=" not in item or item.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (only --config and section.key=value are accepted)")
    return load_config(args.config, args.overrides)


# -- data -----------------------------------------------------------------------------------
def load_training_data(config: RunConfig) -> tuple[list[TrainingExample], set[str], Path | None]:
    """All training examples, the names of symmetric datasets, and the dev task folder."""
    sources = []  # (path, format, dataset name, instruction, symmetric, max_examples)
    dev = None
    if config.data.mix is not None:
        mix = prepare_training_mix(config.data.mix)
        for file in sorted((mix / "train").glob("*.jsonl")):
            sources.append((file, "echo", file.stem, None, False, None))
        dev = mix / "dev" if config.data.dev == "auto" else None
    for spec in config.data.datasets:
        sources.append((spec.path, spec.format, spec.name, spec.instruction, spec.symmetric, spec.max_examples))
    if config.data.dev not in (None, "auto"):
        dev = Path(config.data.dev)
    examples, symmetric = [], set()
    for path, fmt, name, instruction, is_symmetric, limit in sources:
        rows = read_examples(path, fmt, dataset=name, instruction=instruction, num_negatives=config.data.num_negatives)
        examples.extend(rows[:limit])
        if is_symmetric:
            symmetric.add(name)
    return examples, symmetric, dev


# -- one optimizer step -----------------------------------------------------------------------
def apply_update(accelerator: Accelerator, model, optimizer, scheduler, max_grad_norm: float | None) -> float | None:
    """Clip, step and zero; returns the gradient norm before clipping (None when clipping is off).

    Under DeepSpeed the engine does all three, clipping at its gradient_clipping, which
    fill_deepspeed_config set from train.max_grad_norm. The engine holds no scheduler
    (accelerate hands it only DeepSpeed's own), so the one step here is the only one.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        model.step()
        scheduler.step()
        grad_norm = model.get_global_grad_norm()
        return float(grad_norm) if max_grad_norm and grad_norm is not None else None
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) if max_grad_norm else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm) if grad_norm is not None else None


def evaluate_dev(encoder: EchoEncoder, dev: Path | None, max_queries: int | None) -> dict[str, float]:
    """Dev retrieval metrics with the training templates; every process runs it (ZeRO-3 forwards are collective)."""
    if dev is None:
        return {}
    metrics = evaluate_task(encoder, dev, max_examples=max_queries)
    release_prefetched_parameters(encoder.model)
    return {f"dev/{name}": value for name, value in metrics.items()}


def release_prefetched_parameters(model) -> None:
    """Forwards without a backward (evaluation) leave ZeRO-3 holding parameters it prefetched for
    the backward; release them, or the next gather (checkpoint, export) finds them in flight."""
    if hasattr(model, "empty_partition_cache"):  # a DeepSpeed engine; a no-op below ZeRO-3
        model.empty_partition_cache()


def main(argv: list[str] | None = None) -> Path:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    accelerator = make_accelerator()
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    set_seed(config.train.seed)
    if config.train.batch_size % world:
        raise UsageError(f"train.batch_size={config.train.batch_size} must divide by the number of processes ({world})")
    fill_deepspeed_config(accelerator, config.train)

    # Data first: malformed rows stop the run before a model loads or anything is written.
    with accelerator.main_process_first():
        examples, symmetric_datasets, dev = load_training_data(config)
        export_tasks = resolve_tasks(config.export.eval_tasks) if config.export.eval_tasks else {}
    sampler = SingleDatasetBatchSampler([example.dataset for example in examples], config.train.batch_size, config.train.seed)

    output_dir = Path(config.output_dir)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(config_to_yaml(config))
    per_device = config.train.batch_size // world
    global_batch = config.train.batch_size * config.train.gradient_accumulation_steps
    sequences_per_query = 2 + config.data.num_negatives
    if is_main:
        print(config_to_yaml(config))
        print(f"processes={world} per_device_queries={per_device} global_batch={global_batch} "
              f"negatives_per_query={config.train.batch_size * (1 + config.data.num_negatives) - 1} "
              f"sequences_per_step={global_batch * sequences_per_query} max_tokens_per_step={global_batch * sequences_per_query * config.model.max_length} "
              f"examples={len(examples)} batches_per_epoch={len(sampler)} datasets={sorted({e.dataset for e in examples})}")

    # Model: the encoder's base model gets LoRA adapters; weights stay float32, compute runs under autocast.
    with model_build_context(accelerator):
        encoder = EchoEncoder.from_pretrained(config.model.name, mode=config.model.mode, pooling=config.model.pooling,
                                              max_length=config.model.max_length, dtype="float32",
                                              template_file=config.model.template_file, device=accelerator.device)
        encoder.autocast_dtype = torch.bfloat16 if config.model.precision == "bf16" else None
        lora_spec = LoraSpec(r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout,
                             target_modules=config.lora.target_modules, layers=config.lora.layers,
                             trainable_token_ids=[encoder.tokenizer.eos_token_id] if config.lora.trainable_eos else [])
        model = apply_lora(encoder.model, lora_spec)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    spec = export_spec(config.model.name, lora_spec, encoder.echo_config())

    loss_fn = InfoNCELoss(temperature=config.train.temperature, symmetric=config.train.symmetric_loss)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr,
                                  weight_decay=config.train.weight_decay)
    scheduler = get_scheduler(config.train.scheduler, optimizer, num_warmup_steps=config.train.warmup_steps,
                              num_training_steps=config.train.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    encoder.model = model
    chunk_backward = make_chunk_backward(accelerator, model)

    start_step = 0
    checkpoint = resolve_resume(config.train.resume, output_dir)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, model, checkpoint)
        start_step = state["step"]
        sampler.load_state_dict(state["sampler"])
        if is_main:
            print(f"resumed from {checkpoint} at step {start_step}")

    logger = RunLogger(is_main, output_dir, config.wandb.model_dump(), config.model_dump(mode="json"),
                       config.train.max_steps, start_step)
    if start_step == 0:
        logger.log(0, evaluate_dev(encoder, dev, config.data.dev_max_queries))

    def save(step: int) -> Path:
        return save_checkpoint(accelerator, model, output_dir, step, export_spec=spec,
                               config_yaml=config_to_yaml(config), sampler_state=sampler.state_dict())

    batches = _endless(sampler)
    model.train()
    window_start, window_tokens, window_examples = time.perf_counter(), 0, 0
    for step in range(start_step + 1, config.train.max_steps + 1):
        step_loss = 0.0
        for micro in range(config.train.gradient_accumulation_steps):
            local = [examples[i] for i in shard(next(batches), rank, world)]
            batch = collate_examples(local, encoder.tokenize, config.data.num_negatives,
                                     symmetric=local[0].dataset in symmetric_datasets)
            query_keys = torch.tensor([text_key(t) for t in batch.query_texts], device=accelerator.device)
            passage_keys = torch.tensor([text_key(t) for t in batch.passage_texts], device=accelerator.device)

            def contrastive_loss(queries, passages):
                # Each contrastive batch's loss is averaged over the accumulation steps, so the
                # summed gradients are those of the mean loss; ranks are averaged by DDP/DeepSpeed.
                return loss_fn(queries, passages, query_keys, passage_keys) / config.train.gradient_accumulation_steps

            sync = micro == config.train.gradient_accumulation_steps - 1
            if config.train.chunk_size is None:
                joint = encoder.collate(batch.queries + batch.passages)
                loss = single_forward_step(encoder.embed, joint, len(batch.queries), contrastive_loss, chunk_backward, sync)
            else:
                loss = grad_cache_step(
                    encoder.embed,
                    pad_in_chunks(batch.queries, config.train.chunk_size, encoder.collate),
                    pad_in_chunks(batch.passages, config.train.chunk_size, encoder.collate),
                    contrastive_loss,
                    chunk_backward,
                    sync,
                )
            step_loss += loss.item()
            window_tokens += batch.num_tokens * world
            window_examples += len(local) * world
        grad_norm = apply_update(accelerator, model, optimizer, scheduler, config.train.max_grad_norm)
        # The logged loss is the mean over processes of each rank's local mean: the global-batch loss.
        step_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean").item()

        metrics = {"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            metrics["train/grad_norm"] = grad_norm
        if step % config.train.log_every == 0 or step == config.train.max_steps:
            seconds = time.perf_counter() - window_start
            metrics.update({"train/tokens_per_s": window_tokens / seconds, "train/examples_per_s": window_examples / seconds,
                            "train/peak_memory_gb": peak_memory_gb(accelerator.device)})
            window_start, window_tokens, window_examples = time.perf_counter(), 0, 0
        if config.train.eval_every and step % config.train.eval_every == 0 and step < config.train.max_steps:
            metrics.update(evaluate_dev(encoder, dev, config.data.dev_max_queries))
            model.train()
        logger.log(step, metrics)
        logger.advance(1, {"loss": step_loss, **{k.split("/")[1]: v for k, v in metrics.items() if k.endswith("_per_s")}})
        if config.train.save_every and step % config.train.save_every == 0 and step < config.train.max_steps:
            save(step)

    final_checkpoint = save(config.train.max_steps)
    final_metrics = evaluate_dev(encoder, dev, config.data.dev_max_queries)
    for task, folder in export_tasks.items():  # the unmerged model embeds exactly as its export will
        task_metrics = evaluate_task(encoder, folder, max_examples=config.export.eval_max_examples)
        final_metrics.update({f"eval/{task}/{name}": value for name, value in task_metrics.items()})
    release_prefetched_parameters(model)
    logger.log(config.train.max_steps, final_metrics)
    logger.close()

    export_dir = output_dir / "export"
    if config.export.enabled:
        adapter = trainable_state_dict(accelerator.unwrap_model(model))  # collective under ZeRO-3
        if is_main:
            card = _model_card(config, final_metrics, final_checkpoint)
            (final_checkpoint / "MODEL_CARD.md").write_text(card)
            export_merged(spec, adapter, export_dir, card)
        accelerator.wait_for_everyone()
    if is_main:
        print(f"export: {export_dir if config.export.enabled else final_checkpoint}")
    return export_dir


def _endless(sampler: SingleDatasetBatchSampler):
    """Global batches across epochs; the sampler keeps the position for checkpoints."""
    while True:
        yield from sampler


def _model_card(config: RunConfig, metrics: dict[str, float], checkpoint: Path) -> str:
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items()))
    return (
        f"# Echo embedding model fine-tuned from `{config.model.name}`\n\n"
        f"Trained with echo-embeddings {__version__}: mode `{config.model.mode}`, pooling `{config.model.pooling}`, "
        f"LoRA r={config.lora.r} alpha={config.lora.alpha}, {config.train.max_steps} steps "
        f"(checkpoint `{checkpoint.name}`).\n\n"
        "```python\nfrom models import EchoEncoder\nencoder = EchoEncoder.from_pretrained('<this folder>')\n"
        "vectors = encoder.encode(['some text'], kind='query', instruction='Retrieve semantically similar text')\n```\n\n"
        f"## Final evaluation\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"## Training config\n\n```yaml\n{config_to_yaml(config)}```\n"
    )


def cli(argv: list[str] | None = None) -> int:
    """Entry point: bad configs, arguments and data end in one line on stderr, exit code 2."""
    try:
        main(argv)
    except ValueError as error:  # ConfigError, DataFormatError, UsageError and other bad-input errors
        print(f"error: {error}", file=sys.stderr)
        return 2
    if torch.distributed.is_initialized():
        # A finished multi-process run can still abort in C++ destructors at interpreter exit
        # ("terminate called without an active exception" on a ZeRO-3 rank, intermittently, after
        # every file was written). Once all ranks are past this barrier nothing is left to write,
        # so leave without that teardown.
        torch.distributed.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
