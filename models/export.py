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
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from models import __version__
from models.encoder import ECHO_CONFIG
from models.lora import LoraSpec, apply_lora, load_trainable_state
from models.registry import resolve_model
from models.zero3 import outside_zero3

ADAPTER_FILE = "adapter.safetensors"
EXPORT_SPEC_FILE = "export_spec.json"


def export_spec(base_model: str, lora: LoraSpec, encoder_config: dict) -> dict:
    """What a checkpoint records so that it can be exported later without the training config."""
    return {"framework_version": __version__, "base_model": base_model, "lora": lora.to_dict(), "encoder": encoder_config}


def export_merged(spec: dict, adapter_state: dict[str, torch.Tensor], out_dir: Path, model_card: str = "") -> Path:
    """Rebuild base + adapters on CPU in float32, load ``adapter_state``, merge, save atomically to ``out_dir``."""
    base_path = resolve_model(spec["base_model"])
    with outside_zero3():  # the main process exports alone
        model = AutoModel.from_pretrained(base_path, dtype=torch.float32)
        peft_model = apply_lora(model, LoraSpec(**spec["lora"]))
    load_trainable_state(peft_model, adapter_state, source=str(out_dir))
    merged = peft_model.merge_and_unload()

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(staging)
        echo_config = {**spec["encoder"], "framework_version": __version__, "base_model": spec["base_model"],
                       "lora": spec["lora"]}
        (staging / ECHO_CONFIG).write_text(json.dumps(echo_config, indent=2))
        (staging / "README.md").write_text(model_card or _default_card(echo_config))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _default_card(echo_config: dict) -> str:
    return (f"# Echo embedding model\n\nBase model: `{echo_config['base_model']}`, merged LoRA, "
            f"mode `{echo_config['templates']['name']}`, pooling `{echo_config['pooling']}`.\n")


def export_checkpoint(checkpoint_dir: Path, out_dir: Path) -> Path:
    """Export a training checkpoint folder (it holds adapter.safetensors and export_spec.json)."""
    checkpoint_dir = Path(checkpoint_dir)
    for name in (ADAPTER_FILE, EXPORT_SPEC_FILE):
        if not (checkpoint_dir / name).is_file():
            raise ValueError(f"{checkpoint_dir}: not a checkpoint (no {name})")
    spec = json.loads((checkpoint_dir / EXPORT_SPEC_FILE).read_text())
    card_file = checkpoint_dir / "MODEL_CARD.md"
    card = card_file.read_text() if card_file.is_file() else ""
    return export_merged(spec, load_file(checkpoint_dir / ADAPTER_FILE), out_dir, card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export", description="Merge a training checkpoint into a standalone export.")
    parser.add_argument("checkpoint", type=Path, help="a checkpoints/step-N folder")
    parser.add_argument("--out", type=Path, default=None, help="export folder (default: <run>/export-step-N)")
    args = parser.parse_args(argv)
    out = args.out or args.checkpoint.parent.parent / f"export-{args.checkpoint.name}"
    try:
        path = export_checkpoint(args.checkpoint, out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"export: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
