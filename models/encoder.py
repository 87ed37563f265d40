"""``EchoEncoder``: a causal LM, a template set and a pooling rule, giving text embeddings.

The same object serves inference (:meth:`EchoEncoder.encode`, numpy out) and training
(:meth:`EchoEncoder.embed`, a differentiable tensor out), so the fine-tuned model is
evaluated through exactly the code path it was trained with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from echo_base import BadInputError
from models.packing import pack_prompts, packed_attention_kwargs, use_packed_attention
from models.pooling import Pooling, check_pooling, pool, pool_packed
from models.registry import load_model_config, resolve_model
from models.templates import TemplateSet, get_template_set, template_set_from_dict
from models.tokenization import PromptIds, PromptTokenizer, pad_prompts

ECHO_CONFIG = "echo_config.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The prompt cap from_pretrained applies when neither the caller nor the folder sets one. A
# model's own limit (8k tokens for SmolLM2) makes one batch of long documents take minutes;
# 512 prompt tokens keep about 240 tokens of each text under echo's two copies.
DEFAULT_MAX_LENGTH = 512


class EchoEncoder(nn.Module):
    """Embeds texts with a causal LM by pooling over a template's pooled span.

    ``autocast_dtype`` runs the forward under autocast (bf16 by default: about twice the
    float32 matmul rate on CPU as well as GPU) while pooling stays float32.

    ``packing`` (default) runs every forward padding-free (:mod:`models.packing`): the
    batch's prompts back to back in one row, so no pad token is computed. It switches the
    model's attention to one that keeps each prompt to itself; ``packing=False`` pads.

    ``matryoshka_dims`` records the prefix widths a model was trained at (``train.matryoshka_dims``;
    an export's ``echo_config.json`` carries them): ``encode(..., dim=N)`` gives the first N
    dimensions re-normalised, for any N up to the width, trained at or not.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        templates: TemplateSet,
        pooling: Pooling = "mean",
        max_length: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        packing: bool = True,
        matryoshka_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_pooling(pooling)
        if max_length is not None and (not isinstance(max_length, int) or max_length < 8):
            raise BadInputError(f"max_length must be an integer >= 8 or None, got {max_length!r}")
        if matryoshka_dims is not None:
            width = model.config.hidden_size
            if not all(isinstance(dim, int) and 1 <= dim <= width for dim in matryoshka_dims):
                raise BadInputError(f"matryoshka_dims {list(matryoshka_dims)} must be widths in 1..{width}, "
                                    "the model's embedding width")
            matryoshka_dims = tuple(sorted(set(matryoshka_dims)))
        self.matryoshka_dims = matryoshka_dims
        self.model = model
        self.tokenizer = tokenizer
        self.templates = templates
        self.pooling: Pooling = pooling
        self.max_length = max_length
        self.autocast_dtype = autocast_dtype
        self.packing = packing
        if packing:
            use_packed_attention(model)
        model_limit = getattr(model.config, "max_position_embeddings", None)
        self.prompt_tokenizer = PromptTokenizer(
            tokenizer,
            templates,
            append_eos=pooling == "last" and templates.eos_for_last,
            max_length=max_length if max_length is not None else model_limit,
        )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise BadInputError("the tokenizer has neither a pad_token nor an eos_token to pad with")
        self.pad_id: int = pad_id

    @property
    def template_set(self) -> str:
        """The name of the template set (echo, classical, ...)."""
        return self.templates.name

    @property
    def mode(self) -> str:
        """The template set's name under its old name, kept for code written against 0.1."""
        return self.template_set

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        mode: str | None = None,
        pooling: Pooling | None = None,
        max_length: int | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        template_file: str | Path | None = None,
        device: str | torch.device | None = None,
        packing: bool = True,
        trust_remote_code: bool = False,
        matryoshka_dims: Sequence[int] | None = None,
    ) -> EchoEncoder:
        """Load a model by registry name, local folder or hub id.

        ``mode`` names the template set. It and ``pooling``, left out, take what the folder's ``echo_config.json``
        records (an export from training carries its templates and pooling), else
        echo + mean. ``max_length`` (prompt tokens), left out, takes the folder's, else
        :data:`DEFAULT_MAX_LENGTH` (or the model's limit, if lower). ``dtype``: None = float32 weights with bf16 autocast; "float32" =
        exact float32; "bfloat16"/"float16" = weights in that dtype. Weights load from
        safetensors only; ``trust_remote_code`` lets a model folder's own Python code run
        (a model type transformers does not ship), never by default. ``matryoshka_dims``, left
        out, takes the folder's (the widths an export was trained at), else none.
        Raises BadInputError on an unknown template set, pooling or dtype, on pickle-only weights,
        on dims beyond the width, and naming the model when it is not a model folder or cannot be
        loaded (not on the hub, or no hub to ask).
        """
        if dtype is not None and not isinstance(dtype, torch.dtype) and dtype not in DTYPES:
            raise BadInputError(f"dtype must be one of {sorted(DTYPES)} or None, got {dtype!r}")
        if pooling is not None:
            check_pooling(pooling)
        path = resolve_model(name_or_path, trust_remote_code)
        saved = _read_echo_config(path)
        if mode is not None:
            templates = get_template_set(mode, template_file)
        elif saved is not None:
            templates = template_set_from_dict(saved["templates"]["name"], saved["templates"])
        else:
            templates = get_template_set("echo")
        pooling = pooling or (saved["pooling"] if saved else "mean")
        if max_length is None:
            max_length = (saved or {}).get("max_length")
        if matryoshka_dims is None:
            matryoshka_dims = (saved or {}).get("matryoshka_dims")

        weight_dtype = DTYPES.get(dtype, dtype) if dtype is not None else torch.float32
        autocast_dtype = torch.bfloat16 if dtype is None else None
        load_model_config(name_or_path, trust_remote_code)  # a model that does not load is bad input, named in one line
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        # The base model without its LM head: an embedding never needs the vocabulary projection.
        model = AutoModel.from_pretrained(path, dtype=weight_dtype, use_safetensors=True,
                                          trust_remote_code=trust_remote_code)
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH)
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        return cls(model, tokenizer, templates, pooling, max_length, autocast_dtype, packing, matryoshka_dims)

    def with_templates(self, template_set: str | TemplateSet | None = None, pooling: Pooling | None = None) -> EchoEncoder:
        """Another encoder over the same weights with a different template set and/or pooling."""
        if isinstance(template_set, TemplateSet):
            templates = template_set
        else:
            templates = get_template_set(template_set) if template_set else self.templates
        return EchoEncoder(self.model, self.tokenizer, templates, pooling or self.pooling, self.max_length,
                           self.autocast_dtype, self.packing, self.matryoshka_dims)

    def with_mode(self, mode: str | TemplateSet | None = None, pooling: Pooling | None = None) -> EchoEncoder:
        """:meth:`with_templates` under its old name, kept for code written against 0.1."""
        return self.with_templates(mode, pooling)

    def echo_config(self) -> dict:
        """What an export records so that ``from_pretrained`` rebuilds this encoder."""
        dims = list(self.matryoshka_dims) if self.matryoshka_dims is not None else None
        return {"templates": self.templates.to_dict(), "pooling": self.pooling, "max_length": self.max_length,
                "matryoshka_dims": dims}

    # -- the embedding path ------------------------------------------------------------
    def tokenize(
        self, texts: Sequence[str], kind: str = "query", instruction: str | Sequence[str | None] | None = None
    ) -> list[PromptIds]:
        """Prompt ids for ``texts``; ``instruction`` is one for all texts or one per text. Validates the arguments."""
        _check_texts(texts)
        return self.prompt_tokenizer(texts, kind, instruction)

    def collate(self, prompts: Sequence[PromptIds]) -> dict[str, torch.Tensor]:
        """The model inputs of ``prompts``: one packed row, or a right-padded batch when ``packing`` is off."""
        return pack_prompts(prompts) if self.packing else pad_prompts(prompts, self.pad_id, padding_side="right")

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable, L2-normalized float32 embeddings of a collated (packed or padded) batch, in its order."""
        inputs = {key: value.to(self.device) for key, value in batch.items()}
        packed = "cu_seq_lens" in inputs
        if packed:
            model_inputs = packed_attention_kwargs(batch["cu_seq_lens"], self.device)
        else:
            model_inputs = {"attention_mask": inputs["attention_mask"]}
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            hidden = self.model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                                **model_inputs).last_hidden_state
        if packed:
            return pool_packed(hidden[0], inputs["pooled_mask"], inputs["cu_seq_lens"], self.pooling)
        return pool(hidden, inputs["pooled_mask"], inputs["attention_mask"], self.pooling)

    # no_grad, not inference_mode: under DeepSpeed ZeRO-3 the weights gathered for these forwards
    # would become inference tensors, which a later training forward cannot save for backward.
    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        kind: str = "query",
        instruction: str | Sequence[str | None] | None = None,
        batch_size: int = 32,
        show_progress: bool | None = None,
        *,
        max_tokens: int | None = None,
        dim: int | None = None,
    ) -> np.ndarray:
        """Embed ``texts``: float32 numpy [len(texts), hidden] (or [len(texts), dim]), rows L2-normalized.

        ``instruction`` is one instruction for all texts or a list with one per text.

        ``dim`` keeps the first ``dim`` dimensions of each embedding, re-normalised: what a model
        trained with Matryoshka (``matryoshka_dims``) was trained to embed at those widths. Any
        width from 1 to the full one is accepted; at widths it was not trained at, a model
        embeds less well.

        Batches take the texts longest first; each holds at most ``batch_size`` texts and,
        given ``max_tokens``, at most that many tokens (real tokens when packing, else
        once padded: :func:`length_sorted_batches`). The result is in input order, and a text
        gets the same vector whatever the batching. The progress bar counts texts (shown
        by default beyond 8 batches). Raises ValueError on an empty list, a non-string or
        empty item, an unknown kind, a bad batch size or token budget, or a ``dim`` beyond the width.
        """
        if dim is not None:
            _check_positive_int("dim", dim)
        prompts = self.tokenize(texts, kind, instruction)
        batches = length_sorted_batches([len(prompt) for prompt in prompts], batch_size, max_tokens,
                                        packed=self.packing)
        if show_progress is None:
            show_progress = len(batches) > 8
        was_training = self.model.training
        self.model.eval()
        blocks = []
        with tqdm(total=len(prompts), desc=f"encode {kind}", unit=" texts", disable=not show_progress) as progress:
            for rows in batches:
                blocks.append((rows, self.embed(self.collate([prompts[row] for row in rows])).cpu().numpy()))
                progress.update(len(rows))
        self.model.train(was_training)
        # The width comes from the embeddings: a wrapped model (DDP, a DeepSpeed engine) has no HF config.
        vectors = np.empty((len(prompts), blocks[0][1].shape[1]), dtype=np.float32)
        for rows, block in blocks:
            vectors[rows] = block
        return vectors if dim is None else truncate_embeddings(vectors, dim)


def truncate_embeddings(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` columns of unit-norm ``vectors``, each row re-normalised (a Matryoshka prefix).

    Raises BadInputError when ``dim`` exceeds the width.
    """
    if dim > vectors.shape[1]:
        raise BadInputError(f"dim={dim} exceeds the embedding width {vectors.shape[1]}")
    prefix = vectors[:, :dim]
    # The floor keeps an all-zero prefix zero, as torch's F.normalize does.
    return (prefix / np.maximum(np.linalg.norm(prefix, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int | None, max_tokens: int | None = None, *, packed: bool = False
) -> list[list[int]]:
    """Group item indices into batches: longest first, each batch a run of similar lengths.

    Items are sorted by length, longest first (ties keep input order), and cut into
    consecutive batches of at most ``batch_size`` items (None: no count cap). Given
    ``max_tokens``, a batch also holds at most that many tokens: the sum of its lengths
    when ``packed``, else its padded size (items x longest length). Long items thus come
    in small batches and short ones in large batches; an item longer than ``max_tokens``
    goes alone. Raises BadInputError on a batch size or token budget that is not a
    positive integer.
    """
    if batch_size is not None:
        _check_positive_int("batch_size", batch_size)
    if max_tokens is not None:
        _check_positive_int("max_tokens", max_tokens)
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    rows_cap = batch_size or len(order)
    batches: list[list[int]] = []
    tokens = 0  # in the open batch: its real tokens when packed, else its padded size
    for index in order:
        # Sorted longest first, the open batch's first item sets its padded width.
        added = lengths[index] if packed or not batches else lengths[batches[-1][0]]
        if batches and len(batches[-1]) < rows_cap and (max_tokens is None or tokens + added <= max_tokens):
            batches[-1].append(index)
            tokens += added
        else:
            batches.append([index])
            tokens = lengths[index]
    return batches


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or value < 1:
        raise BadInputError(f"{name} must be a positive integer, got {value!r}")


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise BadInputError(f"texts must be a list of strings (wrap a single text as [text]), got {type(texts).__name__}")
    if len(texts) == 0:
        raise BadInputError("texts is empty: nothing to encode")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadInputError(f"texts[{index}] is {type(text).__name__}, not a string")
        if not text.strip():
            raise BadInputError(f"texts[{index}] is empty")


def _read_echo_config(path: str) -> dict | None:
    config_file = Path(path) / ECHO_CONFIG
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise BadInputError(f"{config_file}: not valid JSON ({error})") from None
