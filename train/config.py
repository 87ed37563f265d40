"""The one typed schema of a fine-tuning run, and how a run's config is read.

Every key is documented once, here (the ``lora`` section's in :class:`models.lora.LoraConfig`,
which checkpoints record too). A run's config is a YAML file plus ``key=value`` overrides
(``train.max_steps=3``); unknown keys, wrong types and impossible combinations are all
reported together, before any model loads, each naming its key.

A config file may start from another: ``base: other.yaml`` (relative to the file) reads
that file first and lays this file's sections over it, key by key.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data.prepare import MIXES
from echo_base import BadInputError, read_yaml_mapping, shown
from models.lora import LoraConfig
from models.pooling import Pooling
from models.templates import get_template_set, load_template_sets


class ConfigError(BadInputError):
    """A bad config: the message names every bad key and says what is expected."""


class _Section(BaseModel):
    # Every string is a name, a path (PATH_MAX 4096) or an instruction: longer is a mistake, not a value.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, str_max_length=4096)


class ModelConfig(_Section):
    name: str = Field("smollm2-135m-instruct", description="Base causal LM: registry name, local HF folder or hub id.")
    template_set: str = Field("echo_instruct", description="Template set: a built-in (echo_instruct, classical_instruct, echo, classical, prompteol, ...) or one from template_file.")
    template_file: Path | None = Field(None, description="YAML file of extra template sets (models/templates.py documents the format).")
    pooling: Pooling = Field("mean", description="Pool the mean of the pooled copy, or the last token (EOS appended).")
    max_length: int = Field(256, ge=16, description="Maximum prompt tokens (template + every text copy + EOS); the text is cut, never the template.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16: frozen base weights stored in bf16, matmuls under bf16 autocast, LoRA weights and optimizer state in float32. fp32: all float32.")
    packing: bool = Field(True, description="Padding-free forwards: each forward packs its prompts into one row (models/packing.py), so no pad token is computed. false: pad.")
    trust_remote_code: bool = Field(False, description="Let the model folder's own Python code run (a model type transformers does not ship); the base model and the export load with it. Off: only code installed with transformers runs. Weights load from safetensors only either way.")


class DatasetSpec(_Section):
    name: str = Field(min_length=1, description="Dataset name; every global batch comes from one dataset.")
    path: str = Field(min_length=1, description="JSONL file, or hf:<dataset_id>[:<split>].")
    format: Literal["echo", "flag", "e5"] = Field("echo", description="Row format (data/formats.py).")
    instruction: str | None = Field(None, description="Query instruction when rows carry none.")
    symmetric: bool = Field(False, description="Encode the documents with the query template too (symmetric tasks).")
    max_examples: int | None = Field(None, ge=1, description="Use at most this many rows (the first ones).")


class DataConfig(_Section):
    mix: Literal[tuple(MIXES)] | None = Field("default", description="A training mix prepared offline by data/prepare.py (its MIXES name them; None: use `datasets` only).")
    datasets: list[DatasetSpec] = Field(default_factory=list, description="Explicit datasets, added to the mix.")
    num_negatives: int = Field(1, ge=0, description="Hard negatives per query.")
    dev: str | None = Field("auto", description="Dev retrieval task folder; 'auto' = the mix's dev set; None = no dev evaluation.")
    dev_max_queries: int | None = Field(200, ge=1, description="Cap on dev queries per evaluation.")


class TrainConfig(_Section):
    seed: int = Field(42, description="Seeds data order, LoRA init and dropout.")
    max_steps: int = Field(100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=2, description="Queries per contrastive batch, all processes together: the in-batch negative pool. The global batch (queries per optimizer step) is batch_size x gradient_accumulation_steps.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Contrastive batches per optimizer step (each its own loss).")
    chunk_size: int | None = Field(None, ge=1, description="GradCache chunk: at most this many sequences per forward. With chunk_size and chunk_tokens both None, the whole local batch runs in one forward.")
    chunk_tokens: int | None = Field(None, ge=16, description="GradCache chunk by token budget: at most this many tokens per forward (real tokens when packing, else padded), sequences grouped by length; a longer sequence goes alone. Combines with chunk_size.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warm-up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (None = off).")
    temperature: float = Field(0.02, gt=0, description="InfoNCE temperature (the paper's scale 50).")
    symmetric_loss: bool = Field(False, description="Add the document->query InfoNCE term (each positive scored against all queries).")
    matryoshka_dims: list[int] | None = Field(None, description="Matryoshka: also train the first N dimensions of each embedding (re-normalised) for each N listed, e.g. [64, 128, 256]; the loss is the mean over these widths and the full one (train/loss.py). The export records them; encode(..., dim=N) truncates. None: full width only.")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (None = only at the end).")
    keep_checkpoints: int | None = Field(None, ge=1, description="Keep only the newest N checkpoints: after each save the oldest beyond N are deleted, never before the new one is complete. None = keep all.")
    resume: str = Field("auto", description="'auto' (latest checkpoint in output_dir, if any), 'none' (start at step 0; refused when output_dir already holds checkpoints, which a fresh run would mix with its own), 'overwrite' (start at step 0 after deleting output_dir's checkpoints and log), or a checkpoint path.")
    eval_every: int | None = Field(None, ge=1, description="Dev evaluation every N steps (None = before and after training only).")
    log_every: int = Field(1, ge=1, description="Log loss and throughput every N steps.")
    on_nonfinite: Literal["skip", "stop"] = Field("skip", description="A step whose loss or gradient is NaN or infinite is never applied. skip: its batch is consumed, the weights, optimizer state and lr schedule stay as they were, a warning names the step, dataset and rows; stop: the run ends with that line (exit code 2).")
    max_nonfinite_skips: int = Field(10, ge=0, description="With on_nonfinite=skip: this many non-finite steps in a row are skipped; one more stops the run.")


class WandbConfig(_Section):
    project: str = Field("echo-embeddings", description="wandb project.")
    name: str | None = Field(None, description="Run name (default: output_dir's name).")
    group: str | None = Field(None, description="Run group (sweeps set it).")
    tags: list[str] = Field(default_factory=list, description="Run tags.")
    mode: Literal["auto", "online", "offline", "disabled"] = Field("auto", description="'auto' = online when WANDB_API_KEY is set, else offline.")
    log_model: bool = Field(False, description="At the end, log the export (the final checkpoint when export.enabled=false) as a wandb artifact of type 'model' that references its folder (a file:// URI): wandb checksums the files and uploads none, so the artifact leads to the weights only where that folder can be read.")


class ExportConfig(_Section):
    enabled: bool = Field(True, description="Merge LoRA and write the export at the end of training.")
    eval_tasks: list[str] = Field(default_factory=list, description="Local evaluation tasks (evaluation/tasks.py names, 'toy', folders) scored at the end for the log and the model card; [] = the dev set only.")
    eval_max_examples: int | None = Field(300, ge=1, description="Cap on examples per export evaluation task.")


class RunConfig(_Section):
    output_dir: Path = Field(Path("runs/echo_lora"), description="Checkpoints, logs and the export go here.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        problems = []
        if self.data.mix is None and not self.data.datasets:
            problems.append("data: set data.mix or list data.datasets; there is no training data")
        names = [spec.name for spec in self.data.datasets]
        if len(set(names)) != len(names):
            problems.append(f"data.datasets: dataset names must be unique, got {names}")
        dims = self.train.matryoshka_dims
        if dims is not None and (not dims or min(dims) < 1 or len(set(dims)) != len(dims)):
            problems.append(f"train.matryoshka_dims: expected distinct positive widths, e.g. [64, 128, 256], got {dims}")
        if self.train.chunk_size is not None and self.train.chunk_size > self.train.batch_size * (2 + self.data.num_negatives):
            problems.append(f"train.chunk_size={self.train.chunk_size} exceeds the sequences of a contrastive batch; "
                            "use null for one chunk")
        problems += _template_problems(self.model)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _template_problems(model: ModelConfig) -> list[str]:
    """What is wrong with model.template_file and model.template_set, each naming its key."""
    if model.template_file is not None:
        try:
            load_template_sets(model.template_file)
        except BadInputError as error:
            return [f"model.template_file: {error}"]
    try:
        get_template_set(model.template_set, model.template_file)
    except BadInputError as error:
        return [f"model.template_set: {error}"]
    return []


def _set_dotted(target: dict, dotted: str, raw_value: str) -> None:
    keys = dotted.split(".")
    node = target
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key!r} is not a section")
    try:
        value = yaml.safe_load(raw_value) if raw_value != "" else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {dotted}: value {shown(raw_value)} is not valid YAML ({str(error).splitlines()[0]})") from None
    # wandb's ${args_no_hyphens} writes Python reprs: None must mean null, not the string "None".
    node[keys[-1]] = None if value == "None" else value


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<config>"
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif not item["loc"]:  # a cross-key check: its message names the keys
            lines.append(item["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{key}: {item['msg']} (got {shown(item.get('input'))})")
    return "; ".join(lines)


# Keys renamed in 0.2, accepted under their old names until 0.3: old dotted key -> new dotted key.
RENAMED_KEYS = {"model.mode": "model.template_set"}


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The mapping in ``path``, laid over the file its ``base:`` key names (recursively)."""
    raw = read_yaml_mapping(path, "config", ConfigError)
    if "base" not in raw:
        return raw
    base = path.parent / str(raw.pop("base"))
    if base.resolve() in seen:
        raise ConfigError(f"{path}: base: {base} includes itself")
    return _lay_over(_read_yaml(base, (*seen, path.resolve())), raw)


def _lay_over(base: dict, top: dict) -> dict:
    """``base`` with ``top``'s keys laid over it; sections merge key by key, other values are replaced."""
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _lay_over(merged[key], value) if both_sections else value
    return merged


def _rename_old_keys(raw: dict, where: str) -> None:
    for old, new in RENAMED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = raw.get(old_section)
        if isinstance(section, dict) and old_key in section:
            warnings.warn(f"{where}: {old} is deprecated, use {new} (the old name goes in 0.3)", FutureWarning, stacklevel=3)
            if new_key in raw.get(new_section, {}):
                raise ConfigError(f"{where}: both {old} and {new} are set; keep {new}")
            raw.setdefault(new_section, {})[new_key] = section.pop(old_key)


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read ``path`` and apply ``section.key=value`` overrides; raises ConfigError naming every bad key."""
    path = Path(path)
    raw = _read_yaml(path)
    _rename_old_keys(raw, str(path))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r}: expected section.key=value")
        _set_dotted(raw, RENAMED_KEYS.get(key, key), value)
        if key in RENAMED_KEYS:
            warnings.warn(f"override {key}: deprecated, use {RENAMED_KEYS[key]} (the old name goes in 0.3)", FutureWarning, stacklevel=2)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {_format_errors(error)}") from None


@contextmanager
def config_key(key: str) -> Iterator[None]:
    """Re-raise bad input met while acting on the value of ``key`` (a model that does not load,
    a task folder) as a ConfigError that names the key."""
    try:
        yield
    except BadInputError as error:
        raise ConfigError(f"{key}: {error}") from None


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (saved with every checkpoint and the export)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
