"""An export through sentence-transformers: the same vectors as EchoEncoder, mteb's own evaluate()
on it, and a model card whose usage code runs.

Exports are merged from a tiny random Llama and a random LoRA state (every adapter weight
nonzero, so the merge changes the model). The reference is always
``EchoEncoder.from_pretrained(export, dtype="float32")``: the project's own path, in float32.
"""

from __future__ import annotations

import json
import re

import mteb
import numpy as np
import pytest
import scipy.stats
import torch
import yaml
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import import_from_string
from transformers import AutoModel

from evaluation.metrics import cosine_rows, ndcg_at_k
from models import EchoEncoder
from models.export import SENTENCE_TRANSFORMERS_MODULE, export_merged, export_spec, model_card
from models.lora import LoraConfig, apply_lora, trainable_state_dict
from models.sentence_transformers_module import EchoModule
from models.templates import get_template_set
from tests.test_mteb_adapter import TinyRetrieval, TinySTS

LORA = LoraConfig(r=4, alpha=8)
INSTRUCTION = "Given a sentence, retrieve a paraphrase"
# Lengths differ (one is cut by max_length), so batches carry padding.
TEXTS = ["the fox crossed the river", "snow", "a bird in the tree sang all morning long", "cats and dogs",
         " ".join(["rain on the stone bridge"] * 12)]


@pytest.fixture(scope="module")
def adapter_state(tiny_model_dir):
    """Adapter weights as training leaves them, drawn at random instead of trained."""
    model = apply_lora(AutoModel.from_pretrained(tiny_model_dir, dtype=torch.float32), LORA, eos_token_id=None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return trainable_state_dict(model)


@pytest.fixture(scope="module")
def make_export(tiny_model_dir, adapter_state, tmp_path_factory):
    """Export the adapted tiny model with a template set and a pooling (each built once)."""
    exports = {}

    def make(template_set: str, pooling: str):
        if (template_set, pooling) not in exports:
            encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), mode=template_set, pooling=pooling,
                                                  max_length=96, dtype="float32", device="cpu")
            spec = export_spec(str(tiny_model_dir), LORA, encoder.echo_config())
            folder = tmp_path_factory.mktemp("exports") / f"{template_set}-{pooling}"
            exports[template_set, pooling] = export_merged(spec, adapter_state, folder)
        return exports[template_set, pooling]

    return make


def _load(folder) -> SentenceTransformer:
    return SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")


def _reference(folder) -> EchoEncoder:
    return EchoEncoder.from_pretrained(str(folder), dtype="float32", device="cpu")


@pytest.mark.parametrize("template_set", ["echo", "classical", "echo_instruct"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_sentence_transformers_gives_echo_encoders_vectors(make_export, template_set, pooling):
    export = make_export(template_set, pooling)
    model, reference = _load(export), _reference(export)
    assert isinstance(model[0], EchoModule) and len(model) == 1
    default_query = reference.encode(TEXTS, kind="query")
    # batch_size=2 batches differently from the reference (one batch), which must not move a vector.
    pairs = {
        "query with an instruction": (model.encode_query(TEXTS, prompt=INSTRUCTION, batch_size=2),
                                      reference.encode(TEXTS, kind="query", instruction=INSTRUCTION)),
        "query": (model.encode_query(TEXTS, batch_size=2), default_query),
        "document": (model.encode_document(TEXTS, batch_size=2), reference.encode(TEXTS, kind="document")),
        "encode": (model.encode(TEXTS), default_query),
    }
    for role, (got, expected) in pairs.items():
        assert got.shape == expected.shape == (len(TEXTS), 32), role
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=role)
    if template_set == "echo_instruct":  # the prompt reached the {instruction} slot, and was not prepended
        assert np.abs(pairs["query with an instruction"][0] - default_query).max() > 1e-3
    assert model.get_embedding_dimension() == 32


def test_the_export_names_the_module_and_a_resaved_model_loads_back_the_same(make_export, tmp_path):
    export = make_export("echo_instruct", "last")
    assert import_from_string(json.loads((export / "modules.json").read_text())[0]["type"]) is EchoModule
    assert SENTENCE_TRANSFORMERS_MODULE == f"{EchoModule.__module__}.{EchoModule.__name__}"
    model = _load(export)
    model.save(str(tmp_path / "resaved"))
    resaved = _load(tmp_path / "resaved")
    assert resaved[0].encoder.echo_config() == _reference(export).echo_config()
    np.testing.assert_array_equal(resaved.encode_query(TEXTS, prompt=INSTRUCTION),
                                  model.encode_query(TEXTS, prompt=INSTRUCTION))


def test_a_matryoshka_export_truncated_by_sentence_transformers_gives_encode_with_dim(tiny_model_dir, adapter_state,
                                                                                    tmp_path):
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), mode="echo_instruct", max_length=96, dtype="float32",
                                          device="cpu", matryoshka_dims=[16, 8])
    export = export_merged(export_spec(str(tiny_model_dir), LORA, encoder.echo_config()), adapter_state,
                           tmp_path / "export")
    reference = _reference(export)
    assert reference.matryoshka_dims == (8, 16) and "- **Matryoshka dimensions:** 8, 16" in (export / "README.md").read_text()
    # sentence-transformers' own truncation, then its normalisation: EchoEncoder's dim=N.
    model = SentenceTransformer(str(export), trust_remote_code=True, device="cpu", truncate_dim=8)
    got = model.encode_query(TEXTS, prompt=INSTRUCTION, normalize_embeddings=True)
    np.testing.assert_allclose(got, reference.encode(TEXTS, kind="query", instruction=INSTRUCTION, dim=8), rtol=0, atol=1e-5)
    assert model.get_embedding_dimension() == 8
    model.save(str(tmp_path / "resaved"))
    assert _reference(tmp_path / "resaved").matryoshka_dims == (8, 16)


def test_mteb_evaluates_the_export_through_its_sentence_transformers_wrapper(make_export, tmp_path, monkeypatch):
    export = make_export("echo_instruct", "mean")
    roles = set()  # (task, prompt) of every batch the module embeds
    preprocess = EchoModule.preprocess

    def recording_preprocess(self, inputs, prompt=None, task=None, **kwargs):
        roles.add((task, prompt))
        return preprocess(self, inputs, prompt=prompt, task=task, **kwargs)

    monkeypatch.setattr(EchoModule, "preprocess", recording_preprocess)
    # mteb 2.26's get_model resolves registry names and hub ids only, so a local export goes in as the
    # SentenceTransformer it loads to; mteb wraps it in its own SentenceTransformerEncoderWrapper, which
    # calls encode_query / encode_document with the model's (empty) prompts, and encode for STS.
    results = mteb.evaluate(_load(export), [TinySTS(), TinyRetrieval()], cache=mteb.ResultCache(cache_path=tmp_path),
                            overwrite_strategy="always", show_progress_bar=False)
    scores = {result.task_name: result.get_score() for result in results.task_results}
    assert roles == {(None, None), ("query", ""), ("document", "")}

    reference = _reference(export)
    # STS: both sides embedded as queries; Spearman of the pairs' cosines against the gold scores.
    first, second = (reference.encode(texts, kind="query") for texts in (["a", "a", "b"], ["b", "c", "c"]))
    expected_sts = scipy.stats.spearmanr(cosine_rows(first, second), [5.0, 3.0, 1.0]).statistic
    # Retrieval: queries q1, q2 against documents d1, d2, d3 with TinyRetrieval's graded relevance.
    queries = reference.encode(["cats", "dogs"], kind="query")
    documents = reference.encode(["doc one", "doc two", "doc three"], kind="document")
    expected_ndcg = ndcg_at_k(queries @ documents.T, np.array([[0, 0, 1], [1, 2, 0]]), k=10)
    assert scores == pytest.approx({"TinyEchoSTS": expected_sts, "TinyEchoRetrieval": expected_ndcg}, abs=1e-5)


def test_model_card_describes_the_export_and_its_usage_code_runs(make_export):
    export = make_export("echo_instruct", "last")
    spec = export_spec("HuggingFaceTB/SmolLM2-135M-Instruct", LORA, _reference(export).echo_config())
    card = model_card(spec, {"dev/ndcg@10": 0.5, "dev/mrr@10": 0.25, "eval/toy/S1": 0.125}, "train:\n  lr: 0.001\n",
                      steps=50, training_data=[("bible-kjv-web", "eBible.org", "public domain")], dimensions=32)

    header, body = re.fullmatch(r"---\n(.*?)---\n(.*)", card, re.DOTALL).groups()
    assert yaml.safe_load(header) == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "echo-embeddings"]}
    templates = spec["encoder"]["templates"]
    for line in (f"- **Query template:** `{json.dumps(templates['query'])}`",
                 f"- **Document template:** `{json.dumps(templates['document'])}`",
                 f"- **Default instruction:** {json.dumps(templates['default_instruction'])}",
                 "- **Pooling:** `last`, the hidden state of the last token (an appended EOS)",
                 "- **Maximum sequence length:** 96 tokens", "- **Output dimensionality:** 32",
                 "### dev\n\n| metric | value |\n|---|---|\n| mrr@10 | 0.2500 |\n| ndcg@10 | 0.5000 |\n",
                 "### eval/toy\n\n| metric | value |\n|---|---|\n| S1 | 0.1250 |\n",
                 "| dataset | source | licence |\n|---|---|---|\n| bible-kjv-web | eBible.org | public domain |",
                 "```yaml\ntrain:\n  lr: 0.001\n```", "trained contrastively for 50 steps"):
        assert line in body

    # A template set without an {instruction} slot gets usage code without an instruction.
    echo = {"templates": get_template_set("echo").to_dict(), "pooling": "mean", "max_length": None}
    echo_card = model_card(export_spec("HuggingFaceTB/SmolLM2-135M-Instruct", LORA, echo))
    assert "kind='query')\n" in echo_card and "encode_query(['How do birds find their way south?'])\n" in echo_card
    assert "- **Maximum sequence length:** the base model's limit" in echo_card and "Default instruction" not in echo_card

    # The card's two usage snippets, run on the export, give what the same calls give here.
    echo_snippet, st_snippet = (
        code.replace("path/to/this/folder", str(export)) for code in re.findall(r"```python\n(.*?)```", body, re.DOTALL))
    echo_run, st_run = {}, {}
    exec(echo_snippet, echo_run)
    exec(st_snippet, st_run)
    encoder = EchoEncoder.from_pretrained(str(export))  # as the snippet loads it: bf16 autocast
    queries = encoder.encode(["How do birds find their way south?"], kind="query",
                             instruction=templates["default_instruction"])
    np.testing.assert_array_equal(echo_run["scores"],
                                  queries @ encoder.encode(["Many birds migrate south in winter."], kind="document").T)
    exact = _reference(export)
    expected = exact.encode(["How do birds find their way south?"], kind="query") @ exact.encode(
        ["Many birds migrate south in winter."], kind="document").T
    np.testing.assert_allclose(st_run["scores"].numpy(), expected, rtol=0, atol=1e-5)
