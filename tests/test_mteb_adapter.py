"""The mteb adapter through mteb's own evaluate(), offline, on tiny tasks whose data the test defines."""

import json

import numpy as np
import pytest
import scipy.stats
from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from evaluation.mteb_adapter import TYPE_INSTRUCTIONS, MTEBEchoEncoder, run_mteb, task_instruction
from models import EchoEncoder

TASK_FIELDS = {
    "description": "tiny offline test task", "reference": "https://example.org", "dataset": {"path": "NA", "revision": "NA"},
    "category": "t2t", "eval_splits": ["test"], "eval_langs": ["eng-Latn"], "date": ("2024-01-01", "2024-01-01"),
    "dialect": ["Written"], "domains": [], "task_subtypes": [], "license": "cc-by-4.0",
    "annotations_creators": "derived", "modalities": ["text"], "sample_creation": "found", "bibtex_citation": "",
}


class TinySTS(AbsTaskSTS):
    metadata = TaskMetadata(type="STS", name="TinyEchoSTS", main_score="cosine_spearman", **TASK_FIELDS)
    min_score, max_score = 0, 5

    def load_data(self, num_proc=None, **kwargs):
        self.dataset = DatasetDict({"test": Dataset.from_dict(
            {"sentence1": ["a", "a", "b"], "sentence2": ["b", "c", "c"], "score": [5.0, 3.0, 1.0]})})
        self.data_loaded = True


class TinyRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(type="Retrieval", name="TinyEchoRetrieval", main_score="ndcg_at_10",
                            prompt={"query": "Find the animal"}, **TASK_FIELDS)

    def load_data(self, num_proc=None, **kwargs):
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": "q1", "text": "cats"}, {"id": "q2", "text": "dogs"}]),
            corpus=Dataset.from_list([{"id": "d1", "text": "doc one"}, {"id": "d2", "text": "doc two"},
                                      {"id": "d3", "text": "doc three"}]),
            relevant_docs={"q1": {"d3": 1}, "q2": {"d2": 2, "d1": 1}},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class LookupEncoder:
    """Fixed vectors per text; records (kind, instruction) of each call."""

    template_set, pooling = "echo", "mean"
    vectors = {"a": [1, 0], "b": [0.8, 0.6], "c": [0, 1], "cats": [1, 0], "dogs": [0, 1],
               "doc one": [1, 0], "doc two": [0.6, 0.8], "doc three": [0.8, 0.6]}

    def __init__(self):
        self.calls = []

    def encode(self, texts, kind="query", instruction=None, batch_size=32):
        self.calls.append((kind, instruction, sorted(texts)))
        return np.array([self.vectors[text] for text in texts], dtype=np.float32)


def test_mteb_scores_match_hand_computed_values_and_roles(tmp_path):
    encoder = LookupEncoder()
    results = {r.task_name: r for r in run_mteb(encoder, "lookup", [TinySTS(), TinyRetrieval()], tmp_path)}
    # Same data as tests/test_eval_tasks.py: Spearman 0.5, nDCG@10 (0.630930 + 0.950234) / 2 = 0.790582.
    assert results["TinyEchoSTS"].get_score() == pytest.approx(0.5)
    assert results["TinyEchoRetrieval"].get_score() == pytest.approx(0.790582, abs=1e-5)
    roles = {(kind, instruction) for kind, instruction, _ in encoder.calls}
    assert roles == {("query", TYPE_INSTRUCTIONS["STS"]), ("query", "Find the animal"), ("document", None)}
    assert ("document", None, ["doc one", "doc three", "doc two"]) in encoder.calls


def test_results_are_written_in_mteb_format(tmp_path, tiny_model_dir):
    # float32: the reference below encodes in other batches, which must not move the cosines.
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), mode="echo", pooling="last", dtype="float32")
    run_mteb(encoder, str(tiny_model_dir), [TinySTS()], tmp_path, batch_size=2)
    [path] = list((tmp_path / "results").rglob("TinyEchoSTS.json"))
    assert path.relative_to(tmp_path / "results").parts[0] == f"echo-embeddings__{tiny_model_dir.name}"
    assert "mode_echo" in str(path) and "pooling_last" in str(path)
    saved = json.loads(path.read_text())
    assert saved["task_name"] == "TinyEchoSTS"
    # Reference: scipy's Spearman of the pairs' cosines, the texts encoded here as instructed queries.
    first, second = (encoder.encode(texts, kind="query", instruction=TYPE_INSTRUCTIONS["STS"]).astype(np.float64)
                     for texts in (["a", "a", "b"], ["b", "c", "c"]))
    cosines = (first * second).sum(axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    expected = scipy.stats.spearmanr(cosines, [5.0, 3.0, 1.0]).statistic
    assert saved["scores"]["test"][0]["cosine_spearman"] == pytest.approx(expected, abs=1e-6)


def test_dim_scores_the_re_normalised_prefix_and_names_its_result_folder(tmp_path, tiny_model_dir):
    encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), mode="echo", pooling="mean", dtype="float32")
    run_mteb(encoder, str(tiny_model_dir), [TinySTS()], tmp_path, batch_size=2, dim=8)
    [path] = list((tmp_path / "results").rglob("TinyEchoSTS.json"))
    assert "dim_8" in str(path)
    first, second = (encoder.encode(texts, kind="query", instruction=TYPE_INSTRUCTIONS["STS"])[:, :8].astype(np.float64)
                     for texts in (["a", "a", "b"], ["b", "c", "c"]))
    cosines = (first * second).sum(axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    expected = scipy.stats.spearmanr(cosines, [5.0, 3.0, 1.0]).statistic
    assert json.loads(path.read_text())["scores"]["test"][0]["cosine_spearman"] == pytest.approx(expected, abs=1e-6)
    assert MTEBEchoEncoder(encoder, "x", dim=8).mteb_model_meta.embed_dim == 8


def test_instruction_precedence():
    metadata = TinyRetrieval.metadata
    assert task_instruction(metadata) == "Find the animal"  # the task's own E5-style prompt
    assert task_instruction(metadata, {"TinyEchoRetrieval": "mine"}) == "mine"
    assert task_instruction(TinySTS.metadata) == "Retrieve semantically similar text"  # by type
    # The template set keeps its old key "mode": it names the result folder.
    assert MTEBEchoEncoder(LookupEncoder(), "x").mteb_model_meta.experiment_kwargs == {"mode": "echo", "pooling": "mean"}
