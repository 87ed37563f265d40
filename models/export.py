"""Merged export: LoRA folded into the base weights, saved as a self-describing HF folder.

An export holds the merged weights (safetensors), the tokenizer, ``echo_config.json``
(templates, pooling, lengths, framework version, the adapters it came from), a README
model card, and what sentence-transformers reads (``modules.json``,
``config_sentence_transformers.json``). ``EchoEncoder.from_pretrained(export)`` then needs
nothing else, and ``SentenceTransformer(export, trust_remote_code=True)`` runs the same
encoder through :class:`models.sentence_transformers_module.EchoModule`.

Export from any training checkpoint:

    python -m models.export runs/echo_lora/checkpoints/step-50 --out runs/echo_lora/export-step-50
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
import yaml
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from echo_base import BadInputError, atomic_folder
from models import __version__
from models.encoder import ECHO_CONFIG
from models.lora import LoraConfig, apply_lora, check_finite_weights, load_trainable_state
from models.registry import resolve_model
from models.templates import template_set_from_dict
from models.zero3 import outside_zero3

ADAPTER_FILE = "adapter.safetensors"
EXPORT_SPEC_FILE = "export_spec.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
# The class sentence-transformers imports for an export (models/sentence_transformers_module.py); named
# here as a string so that exporting never needs the optional sentence-transformers package.
SENTENCE_TRANSFORMERS_MODULE = "models.sentence_transformers_module.EchoModule"


def export_spec(base_model: str, lora: LoraConfig, encoder_config: dict) -> dict:
    """What a checkpoint records so that it can be exported later without the training config."""
    return {"framework_version": __version__, "base_model": base_model, "lora": lora.model_dump(),
            "encoder": encoder_config}


def model_card(spec: dict, metrics: dict[str, float] | None = None, run_config_yaml: str | None = None,
               steps: int | None = None, *, training_data: Sequence[tuple[str, str, str]] | None = None,
               dimensions: int | None = None) -> str:
    """The README of an export, laid out like sentence-transformers' model cards.

    ``spec`` is :func:`export_spec`'s record. Training adds the final ``metrics`` ("group/metric"
    names, one table per group), the run config, the number of ``steps``, the ``training_data``
    rows (dataset, source, licence) and the embedding ``dimensions``.
    """
    base_model = spec["base_model"]
    metadata = {"base_model": base_model, "library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
                "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "echo-embeddings"]}
    trained = f" for {steps} steps" if steps is not None else ""
    card = [
        f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n",
        f"# Echo embedding model fine-tuned from `{base_model}`\n",
        f"`{base_model}` with LoRA adapters trained contrastively{trained} and merged into its weights. A text is "
        "embedded by filling it into its template (queries and documents have their own) and pooling only the "
        "tokens of the `{pooled_text}` copy.\n",
        "## Model Details\n",
        _model_details(spec, dimensions),
        "## Usage\n",
        _usage(spec),
    ]
    if metrics:
        card += ["## Evaluation\n", *_metric_tables(metrics)]
    if training_data or run_config_yaml:
        card.append("## Training Details\n")
    if training_data:
        rows = "\n".join(f"| {dataset} | {source} | {license} |" for dataset, source, license in training_data)
        card.append(f"### Training Data\n\n| dataset | source | licence |\n|---|---|---|\n{rows}\n")
    if run_config_yaml:
        card.append(f"### Training Config\n\n```yaml\n{run_config_yaml}```\n")
    card.append(f"### Framework Versions\n\n- echo-embeddings: {spec['framework_version']}\n"
                f"- Transformers: {transformers.__version__}\n- PyTorch: {torch.__version__}\n"
                f"- Python: {platform.python_version()}\n")
    return "\n".join(card)


def _model_details(spec: dict, dimensions: int | None) -> str:
    encoder, lora = spec["encoder"], spec["lora"]
    templates = encoder["templates"]
    if encoder["pooling"] == "mean":
        pooling = "`mean`, the average of the hidden states of the `{pooled_text}` copy's tokens"
    else:
        last_token = "an appended EOS" if templates["eos_for_last"] else "the template's final token"
        pooling = f"`last`, the hidden state of the last token ({last_token})"
    # json.dumps shows a template's newlines as \n, so each stays on one line of the card.
    lines = [
        f"- **Base model:** `{spec['base_model']}`",
        f"- **Template set:** `{templates['name']}`",
        f"- **Query template:** `{json.dumps(templates['query'])}`",
        f"- **Document template:** `{json.dumps(templates['document'])}`",
    ]
    if templates["default_instruction"]:
        lines.append(f"- **Default instruction:** {json.dumps(templates['default_instruction'])}")
    max_length = f"{encoder['max_length']} tokens" if encoder["max_length"] else "the base model's limit"
    lines += [
        f"- **Pooling:** {pooling}",
        f"- **Maximum sequence length:** {max_length}, the whole prompt (template, every copy of the text, EOS)",
    ]
    if dimensions:
        lines.append(f"- **Output dimensionality:** {dimensions}")
    if encoder.get("matryoshka_dims"):  # absent from checkpoints written before Matryoshka training
        widths = ", ".join(str(dim) for dim in encoder["matryoshka_dims"])
        lines.append(f"- **Matryoshka dimensions:** {widths} (trained; `encode(..., dim=N)` keeps the first N, "
                     "re-normalised; with Sentence Transformers `truncate_dim=N` and `normalize_embeddings=True`)")
    lines += [
        "- **Similarity function:** cosine (the vectors are L2-normalized)",
        f"- **LoRA:** r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']}, "
        f"target modules `{lora['target_modules']}`, merged into the weights",
    ]
    return "\n".join(lines) + "\n"


def _usage(spec: dict) -> str:
    templates = spec["encoder"]["templates"]
    # The instruction argument is shown only where the query template has an {instruction} slot to fill.
    takes_instruction = template_set_from_dict(templates["name"], templates).query.takes_instruction
    instruction = f", instruction={templates['default_instruction']!r}" if takes_instruction else ""
    prompt = f", prompt={templates['default_instruction']!r}" if takes_instruction else ""
    return (
        "### With echo-embeddings\n\n"
        "```bash\npip install -e .  # in a checkout of echo-embeddings\n```\n\n"
        "```python\nfrom models import EchoEncoder\n\n"
        "encoder = EchoEncoder.from_pretrained('path/to/this/folder')\n"
        f"queries = encoder.encode(['How do birds find their way south?'], kind='query'{instruction})\n"
        "documents = encoder.encode(['Many birds migrate south in winter.'], kind='document')\n"
        "scores = queries @ documents.T\n```\n\n"
        "### With Sentence Transformers\n\n"
        "```bash\npip install -e '.[st]'  # in a checkout of echo-embeddings\n```\n\n"
        "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
        "model = SentenceTransformer('path/to/this/folder', trust_remote_code=True)\n"
        f"queries = model.encode_query(['How do birds find their way south?']{prompt})\n"
        "documents = model.encode_document(['Many birds migrate south in winter.'])\n"
        "scores = model.similarity(queries, documents)\n```\n\n"
        f"The folder holds no code: its `modules.json` names `{SENTENCE_TRANSFORMERS_MODULE}` from the "
        "`echo-embeddings` package, which must be installed. sentence-transformers (>= 6) asks for "
        "`trust_remote_code=True` before it imports a module class from outside its own package, an installed "
        "one included; nothing in this folder is run. `prompt` is the task instruction: it fills the template's "
        "`{instruction}` slot and is not prepended to the text; without one, queries get the default instruction. "
        "`encode` embeds as a query, as symmetric tasks do for both sides.\n"
    )


def _metric_tables(metrics: dict[str, float]) -> list[str]:
    """One markdown table per metric group: "eval/toy/S1" goes to table "eval/toy" as row "S1"."""
    groups: dict[str, list[str]] = {}
    for name, value in sorted(metrics.items()):
        group, _, metric = name.rpartition("/")
        groups.setdefault(group or "metrics", []).append(f"| {metric} | {value:.4f} |")
    return [f"### {group}\n\n| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n"
            for group, rows in groups.items()]


def _sentence_transformers_files() -> dict[str, object]:
    """File name -> content of what ``SentenceTransformer(folder)`` reads besides the module's own config.

    One module, :class:`~models.sentence_transformers_module.EchoModule`, saved in the folder's
    root (its config is ``echo_config.json``). The query and document prompts are empty:
    EchoModule reads a prompt as the instruction, and an empty one means the default.
    """
    return {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": SENTENCE_TRANSFORMERS_MODULE}],
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "__version__": {"echo_embeddings": __version__, "transformers": transformers.__version__,
                            "pytorch": torch.__version__},
            "prompts": {"query": "", "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
            # sentence-transformers checks these before it imports the module, and names what to install.
            "requirements": {"echo-embeddings": {"specifier": f">={__version__}",
                                                 "reason": f"The module {SENTENCE_TRANSFORMERS_MODULE} comes from it."}},
        },
    }


def export_merged(spec: dict, adapter_state: dict[str, torch.Tensor], out_dir: Path, card: str | None = None, *,
                  trust_remote_code: bool = False) -> Path:
    """Rebuild base + adapters on CPU in float32, load ``adapter_state``, merge, save atomically to ``out_dir``.

    ``trust_remote_code`` lets the base model folder's own code run (model.trust_remote_code).
    Raises NonFiniteError naming the weight, before anything is written, when an adapter
    weight is not finite; StorageError naming the path when the storage refuses a write.
    """
    check_finite_weights(adapter_state, f"export {out_dir}")
    base_path = resolve_model(spec["base_model"], trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    with outside_zero3():  # the main process exports alone
        model = AutoModel.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True,
                                          trust_remote_code=trust_remote_code)
        peft_model = apply_lora(model, LoraConfig.model_validate(spec["lora"]), tokenizer.eos_token_id)
    load_trainable_state(peft_model, adapter_state, source=str(out_dir))
    merged = peft_model.merge_and_unload()

    with atomic_folder(out_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        echo_config = {**spec["encoder"], "framework_version": __version__, "base_model": spec["base_model"],
                       "lora": spec["lora"]}
        (staging / ECHO_CONFIG).write_text(json.dumps(echo_config, indent=2))
        for name, content in _sentence_transformers_files().items():
            (staging / name).write_text(json.dumps(content, indent=2))
        (staging / "README.md").write_text(card or model_card(spec, dimensions=merged.config.hidden_size))
    return Path(out_dir)


def export_checkpoint(checkpoint_dir: Path, out_dir: Path, *, trust_remote_code: bool = False) -> Path:
    """Export a training checkpoint folder (it holds adapter.safetensors and export_spec.json).

    Raises BadInputError when the folder is not a checkpoint.
    """
    checkpoint_dir = Path(checkpoint_dir)
    for name in (ADAPTER_FILE, EXPORT_SPEC_FILE):
        if not (checkpoint_dir / name).is_file():
            raise BadInputError(f"{checkpoint_dir}: not a checkpoint (no {name})")
    spec = json.loads((checkpoint_dir / EXPORT_SPEC_FILE).read_text())
    card_file = checkpoint_dir / MODEL_CARD_FILE
    card = card_file.read_text() if card_file.is_file() else None
    return export_merged(spec, load_file(checkpoint_dir / ADAPTER_FILE), out_dir, card,
                         trust_remote_code=trust_remote_code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export", description="Merge a training checkpoint into a standalone export.")
    parser.add_argument("checkpoint", type=Path, help="a checkpoints/step-N folder")
    parser.add_argument("--out", type=Path, default=None, help="export folder (default: <run>/export-step-N)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the base model folder's own Python code run (as model.trust_remote_code in training)")
    args = parser.parse_args(argv)
    out = args.out or args.checkpoint.parent.parent / f"export-{args.checkpoint.name}"
    try:
        path = export_checkpoint(args.checkpoint, out, trust_remote_code=args.trust_remote_code)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"export: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
