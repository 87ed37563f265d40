"""Merged export: LoRA folded into the base weights, saved as a self-describing HF folder.

An export holds the merged weights (safetensors), the tokenizer, ``echo_config.json``
(templates, pooling, lengths, framework version, the adapters it came from) and a
README model card. ``EchoEncoder.from_pretrained(export)`` then needs nothing else.

Export from any training checkpoint:

    python -m models.export runs/echo_lora/checkpoints/step-50 --out runs/echo_lora/export-step-50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from echo_base import BadInputError, atomic_folder
from models import __version__
from models.encoder import ECHO_CONFIG
from models.lora import LoraConfig, apply_lora, load_trainable_state
from models.registry import resolve_model
from models.zero3 import outside_zero3

ADAPTER_FILE = "adapter.safetensors"
EXPORT_SPEC_FILE = "export_spec.json"
MODEL_CARD_FILE = "MODEL_CARD.md"


def export_spec(base_model: str, lora: LoraConfig, encoder_config: dict) -> dict:
    """What a checkpoint records so that it can be exported later without the training config."""
    return {"framework_version": __version__, "base_model": base_model, "lora": lora.model_dump(),
            "encoder": encoder_config}


def model_card(spec: dict, metrics: dict[str, float] | None = None, run_config_yaml: str | None = None,
               steps: int | None = None) -> str:
    """The README of an export: what it is, how to load it, and (from training) its scores and config."""
    encoder, lora = spec["encoder"], spec["lora"]
    trained = f", {steps} steps" if steps is not None else ""
    card = (
        f"# Echo embedding model fine-tuned from `{spec['base_model']}`\n\n"
        f"Trained with echo-embeddings {spec['framework_version']}: template set `{encoder['templates']['name']}`, "
        f"pooling `{encoder['pooling']}`, LoRA r={lora['r']} alpha={lora['alpha']}, merged{trained}.\n\n"
        "```python\nfrom models import EchoEncoder\nencoder = EchoEncoder.from_pretrained('<this folder>')\n"
        "vectors = encoder.encode(['some text'], kind='query', instruction='Retrieve semantically similar text')\n```\n"
    )
    if metrics:
        rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items()))
        card += f"\n## Final evaluation\n\n| metric | value |\n|---|---|\n{rows}\n"
    if run_config_yaml:
        card += f"\n## Training config\n\n```yaml\n{run_config_yaml}```\n"
    return card


def export_merged(spec: dict, adapter_state: dict[str, torch.Tensor], out_dir: Path, card: str | None = None) -> Path:
    """Rebuild base + adapters on CPU in float32, load ``adapter_state``, merge, save atomically to ``out_dir``."""
    base_path = resolve_model(spec["base_model"])
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    with outside_zero3():  # the main process exports alone
        model = AutoModel.from_pretrained(base_path, dtype=torch.float32)
        peft_model = apply_lora(model, LoraConfig.model_validate(spec["lora"]), tokenizer.eos_token_id)
    load_trainable_state(peft_model, adapter_state, source=str(out_dir))
    merged = peft_model.merge_and_unload()

    with atomic_folder(out_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        echo_config = {**spec["encoder"], "framework_version": __version__, "base_model": spec["base_model"],
                       "lora": spec["lora"]}
        (staging / ECHO_CONFIG).write_text(json.dumps(echo_config, indent=2))
        (staging / "README.md").write_text(card or model_card(spec))
    return Path(out_dir)


def export_checkpoint(checkpoint_dir: Path, out_dir: Path) -> Path:
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
    return export_merged(spec, load_file(checkpoint_dir / ADAPTER_FILE), out_dir, card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export", description="Merge a training checkpoint into a standalone export.")
    parser.add_argument("checkpoint", type=Path, help="a checkpoints/step-N folder")
    parser.add_argument("--out", type=Path, default=None, help="export folder (default: <run>/export-step-N)")
    args = parser.parse_args(argv)
    out = args.out or args.checkpoint.parent.parent / f"export-{args.checkpoint.name}"
    try:
        path = export_checkpoint(args.checkpoint, out)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"export: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
