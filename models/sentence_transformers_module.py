"""The module through which sentence-transformers loads an export: ``SentenceTransformer(export_dir)``.

An export's ``modules.json`` (written by :mod:`models.export`) names :class:`EchoModule` as
the model's only module. It holds an :class:`EchoEncoder` read from the folder, so prompts
are built by the project's own tokenizer (the pooled span known by construction) and pooled
as ``echo_config.json`` records: sentence-transformers runs exactly the project's path.

The roles map onto sentence-transformers' query/document API (it passes them as ``task``):

* ``encode_query(texts, prompt=instruction)`` embeds ``kind="query"`` with that instruction;
* ``encode_document(texts)`` embeds ``kind="document"``;
* ``encode(texts)`` embeds as a query, as symmetric tasks embed both sides.

``prompt`` is the task instruction: it fills the template's ``{instruction}`` slot and is
never prepended to the text. No prompt, or an empty one, means the template set's default
instruction. This needs sentence-transformers >= 6, whose ``preprocess`` receives the prompt
apart from the texts (version 5 prepended it to them). Weights load in float32 unless
``model_kwargs={"dtype": ...}`` asks otherwise, and run without autocast, so the vectors equal
``EchoEncoder.from_pretrained(export, dtype="float32").encode(...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers.base.modules import InputModule

from models import __version__
from models.encoder import ECHO_CONFIG, EchoEncoder


class EchoModule(InputModule):
    """An :class:`EchoEncoder` as a sentence-transformers input module: it tokenizes, embeds and pools."""

    config_file_name = ECHO_CONFIG

    def __init__(self, encoder: EchoEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    @property
    def tokenizer(self):  # what sentence-transformers reports as the model's tokenizer
        return self.encoder.tokenizer

    def get_embedding_dimension(self) -> int:
        return self.encoder.model.config.hidden_size

    def get_config_dict(self) -> dict[str, Any]:
        """What ``echo_config.json`` records, so that a re-saved model loads back the same."""
        return {**self.encoder.echo_config(), "framework_version": __version__}

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             model_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> EchoModule:
        """Build the encoder from the export folder; ``model_kwargs["dtype"]`` picks the weight dtype (float32).

        The other arguments sentence-transformers passes (processor and config kwargs, backend) do not apply.
        """
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                   revision=revision, local_files_only=local_files_only)
        dtype = (model_kwargs or {}).get("dtype", "float32")
        # An explicit dtype means no autocast; sentence-transformers then moves the model to its own device.
        return cls(EchoEncoder.from_pretrained(folder, dtype=dtype, device="cpu"))

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, task: str | None = None,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """Prompt ids of ``inputs`` with their pooled mask: ``task`` is the kind, ``prompt`` the instruction."""
        prompts = self.encoder.tokenize(list(inputs), kind=task or "query", instruction=prompt or None)
        return self.encoder.collate(prompts)

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        features["sentence_embedding"] = self.encoder.embed(features)
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the weights, tokenizer and ``echo_config.json`` that :meth:`load` reads back."""
        self.encoder.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.encoder.tokenizer.save_pretrained(output_path)
        self.save_config(output_path)
