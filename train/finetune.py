"""Contrastive LoRA fine-tuning of a causal LM into an echo embedding model.

    accelerate launch train/finetune.py --config configs/echo_lora.yaml [section.key=value ...]

Reads top to bottom: config -> every input checked (data, tasks, output folder) -> model +
LoRA -> output folder locked -> optimizer, scheduler -> training step -> resume -> loop
(step, log, evaluate, save) -> final checkpoint -> export. The last line it prints is
``export: <path of the merged model>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch train/finetune.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import PeftModel
from transformers import get_scheduler

from data.sampler import SingleDatasetBatchSampler
from echo_base import BadInputError, atomic_file, command_status, storage_errors
from evaluation.metrics import main_metric_mean
from evaluation.tasks import MAIN_METRICS, evaluate_task, load_task_info
from models import EchoEncoder
from models.export import MODEL_CARD_FILE, export_merged, export_spec, model_card
from models.lora import apply_lora, store_frozen_linear_weights, trainable_state_dict
from models.zero3 import release_prefetched_parameters
from train.accelerator import fill_deepspeed_config, make_accelerator, model_build_context
from train.checkpoint import Checkpointer, discard_earlier_run
from train.config import RunConfig, config_to_yaml
from train.loss import InfoNCELoss
from train.preflight import parse_args, read_run_inputs
from train.run_folder import lock_run_folder, release_run_folder
from train.step import NonFiniteGuard, TrainingStep
from train.tracking import RunLogger, close_progress_bars, run_dir
from train.training_data import ContrastiveBatches


def main(argv: list[str] | None = None) -> Path:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    accelerator = make_accelerator()
    set_seed(config.train.seed)
    fill_deepspeed_config(accelerator, config.train)

    # Every input first (train/preflight.py), and the model: bad input stops the run before anything is written.
    with accelerator.main_process_first():
        inputs = read_run_inputs(config, accelerator.num_processes, main_process=accelerator.is_main_process)
    data, export_tasks = inputs.data, inputs.export_tasks
    sampler = SingleDatasetBatchSampler([example.dataset for example in data.examples], config.train.batch_size,
                                        config.train.seed)
    output_dir = run_dir(config.output_dir)
    if accelerator.is_main_process:
        print(config_to_yaml(config) + describe_run(config, accelerator, data.examples, sampler))
    encoder, model = build_model(config, accelerator)
    if accelerator.is_main_process:
        with storage_errors(output_dir):  # a read-only or full output folder: one line, not a traceback
            lock_run_folder(output_dir)  # held to the end of the run: a second run on this folder is refused
            if config.train.resume == "overwrite":
                discard_earlier_run(output_dir)
            (output_dir / "config.yaml").write_text(config_to_yaml(config))
    spec = export_spec(config.model.name, config.lora, encoder.echo_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr,
                                  weight_decay=config.train.weight_decay)
    scheduler = get_scheduler(config.train.scheduler, optimizer, num_warmup_steps=config.train.warmup_steps,
                              num_training_steps=config.train.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    encoder.model = model
    loss_fn = InfoNCELoss(temperature=config.train.temperature, symmetric=config.train.symmetric_loss,
                          matryoshka_dims=config.train.matryoshka_dims)
    step = TrainingStep(accelerator, model, encoder, optimizer, scheduler, loss_fn, chunk_size=config.train.chunk_size,
                        chunk_tokens=config.train.chunk_tokens, accumulation_steps=config.train.gradient_accumulation_steps,
                        max_grad_norm=config.train.max_grad_norm)
    batches = ContrastiveBatches(data, sampler, encoder.tokenize, config.data.num_negatives,
                                 accelerator.process_index, accelerator.num_processes)
    checkpoints = Checkpointer(accelerator, model, output_dir, export_spec=spec, config_yaml=config_to_yaml(config),
                               sampler=sampler, keep=config.train.keep_checkpoints)
    start_step = checkpoints.resume(config.train.resume)
    logger = RunLogger(accelerator.is_main_process, output_dir, config.wandb.model_dump(), config.model_dump(mode="json"),
                       config.train.max_steps, start_step, config.train.log_every, accelerator.device)
    nonfinite = NonFiniteGuard(config.train.on_nonfinite, config.train.max_nonfinite_skips, data.describe_rows,
                               warn=logger.warn)
    if start_step == 0:
        logger.log(0, evaluate_dev(encoder, data.dev, config.data.dev_max_queries))

    model.train()
    for step_number in range(start_step + 1, config.train.max_steps + 1):
        result = step(batches)
        nonfinite(step_number, result)  # raises NonFiniteError when the run must stop
        last = step_number == config.train.max_steps
        dev_metrics = {}
        if config.train.eval_every and step_number % config.train.eval_every == 0 and not last:
            dev_metrics = evaluate_dev(encoder, data.dev, config.data.dev_max_queries)
            model.train()
        logger.log_step(step_number, result, dev_metrics)
        if config.train.save_every and step_number % config.train.save_every == 0 and not last:
            checkpoints.save(step_number)

    final_checkpoint = checkpoints.save(config.train.max_steps)
    final_metrics = evaluate_final(encoder, data.dev, export_tasks, config)
    logger.log(config.train.max_steps, final_metrics)
    export_dir = final_checkpoint
    if config.export.enabled:
        card = model_card(spec, final_metrics, config_to_yaml(config), steps=config.train.max_steps,
                          training_data=data.sources, dimensions=accelerator.unwrap_model(model).config.hidden_size)
        export_dir = export_run(accelerator, model, spec, card, final_checkpoint, output_dir / "export",
                                trust_remote_code=config.model.trust_remote_code)
    elif accelerator.is_main_process:
        print(f"export: {final_checkpoint}")  # export.enabled=false: the final checkpoint stands in
    logger.close(export_dir)  # after the export: wandb.log_model references it
    release_run_folder(output_dir)
    return export_dir


def describe_run(config: RunConfig, accelerator: Accelerator, examples: list, sampler: SingleDatasetBatchSampler) -> str:
    """The quantities a config implies, printed at start-up."""
    world, train = accelerator.num_processes, config.train
    global_batch = train.batch_size * train.gradient_accumulation_steps  # queries per optimizer step
    sequences = global_batch * (2 + config.data.num_negatives)
    return (f"processes={world} per_device_queries={train.batch_size // world} global_batch={global_batch} "
            f"negatives_per_query={train.batch_size * (1 + config.data.num_negatives) - 1} "
            f"sequences_per_step={sequences} max_tokens_per_step={sequences * config.model.max_length} "
            f"examples={len(examples)} batches_per_epoch={len(sampler)} "
            f"datasets={sorted({example.dataset for example in examples})}")


def build_model(config: RunConfig, accelerator: Accelerator) -> tuple[EchoEncoder, PeftModel]:
    """The encoder over the base model with LoRA adapters, computing in ``model.precision``.

    Under bf16 the frozen linear weights are stored in bf16 (models.lora.store_frozen_linear_weights):
    the same products as float32 weights under autocast, without re-casting them on every op.
    """
    bf16 = config.model.precision == "bf16"
    with model_build_context(accelerator):
        encoder = EchoEncoder.from_pretrained(config.model.name, mode=config.model.template_set,
                                              pooling=config.model.pooling, max_length=config.model.max_length,
                                              dtype="float32", template_file=config.model.template_file,
                                              device=accelerator.device, packing=config.model.packing,
                                              trust_remote_code=config.model.trust_remote_code,
                                              matryoshka_dims=config.train.matryoshka_dims)
        encoder.autocast_dtype = torch.bfloat16 if bf16 else None
        model = apply_lora(encoder.model, config.lora, encoder.tokenizer.eos_token_id)
        if bf16:
            store_frozen_linear_weights(model, torch.bfloat16)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return encoder, model


def evaluate_dev(encoder: EchoEncoder, dev: Path | None, max_queries: int | None) -> dict[str, float]:
    """Dev retrieval metrics with the training templates; every process runs it (ZeRO-3 forwards are collective)."""
    if dev is None:
        return {}
    metrics = evaluate_task(encoder, dev, max_examples=max_queries)
    release_prefetched_parameters(encoder.model)
    return {f"dev/{name}": value for name, value in metrics.items()}


def evaluate_final(encoder: EchoEncoder, dev: Path | None, tasks: dict[str, Path], config: RunConfig) -> dict[str, float]:
    """Dev metrics, the scores on export.eval_tasks and their mean of main metrics (``eval/mean``).

    The unmerged model embeds exactly as its export will.
    """
    metrics = evaluate_dev(encoder, dev, config.data.dev_max_queries)
    scored_tasks = []
    for task, folder in tasks.items():
        scores = evaluate_task(encoder, folder, max_examples=config.export.eval_max_examples)
        metrics.update({f"eval/{task}/{name}": value for name, value in scores.items()})
        scored_tasks.append((MAIN_METRICS[load_task_info(folder).type], scores))
    if scored_tasks:  # the recipe ablation's criterion (README), and a sweep metric
        metrics["eval/mean"] = main_metric_mean(scored_tasks)
    release_prefetched_parameters(encoder.model)
    return metrics


def export_run(accelerator: Accelerator, model, spec: dict, card: str, checkpoint: Path, export_dir: Path, *,
               trust_remote_code: bool = False) -> Path:
    """Merge the trained adapters into the base model and save the export (main process; all must call)."""
    adapter = trainable_state_dict(accelerator.unwrap_model(model))  # collective under ZeRO-3
    if accelerator.is_main_process:
        with atomic_file(checkpoint / MODEL_CARD_FILE) as staging:  # into a published checkpoint: whole or not at all
            staging.write_text(card)
        export_merged(spec, adapter, export_dir, card, trust_remote_code=trust_remote_code)
        print(f"export: {export_dir}")
    accelerator.wait_for_everyone()
    return export_dir


def _main_closing_progress_bars(argv: list[str] | None) -> None:
    try:
        main(argv)
    except BadInputError:
        close_progress_bars()  # a run stopped mid-way (a non-finite step, a full disk): its bar ends its line first
        raise


def cli(argv: list[str] | None = None) -> int:
    """Entry point: bad configs, arguments and data end in one line on stderr, exit code 2 (any other error keeps its traceback)."""
    status = command_status(lambda: _main_closing_progress_bars(argv))
    if status == 0 and torch.distributed.is_initialized():
        # Leave without interpreter finalization: it can abort a rank ("terminate called without an
        # active exception") after every file was written. The cause is upstream. A gloo worker
        # thread (ProcessGroupGloo::runLoop) destroys each finished collective's work object; when
        # that holds the last reference to a tensor owned by a Python object, its destructor takes
        # the GIL, and once finalization has begun CPython <= 3.13 ends such a thread with
        # pthread_exit, whose forced unwind through the destructor calls std::terminate (a core
        # dump shows exactly that stack; pybind/pybind11#1360 is the same forced unwind, CPython
        # documents the thread exit in bpo-36427 and makes such threads hang instead from 3.14).
        # destroy_process_group() cannot join those threads first: DeepSpeed keeps the groups
        # referenced (every ZeRO-3 parameter's ds_process_group, deepspeed.utils.groups._WORLD_GROUP),
        # so the worker threads live on into finalization. Once all ranks are past this barrier
        # nothing is left to write.
        torch.distributed.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return status


if __name__ == "__main__":
    sys.exit(cli())
