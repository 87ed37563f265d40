"""Task loaders and per-type evaluators on tiny task folders written by the tests themselves."""

import json

import numpy as np
import pytest

from data.formats import DataFormatError, write_task
from echo_base import BadInputError
from evaluation.tasks import check_task, evaluate_task, load_task_info, read_task_file
from models import EchoEncoder


class LookupEncoder:
    """Returns fixed vectors per text and records each call's kind and instruction(s).

    Like EchoEncoder.encode it takes one instruction for all texts or a list with one per text.
    """

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[tuple[str, str | list[str | None] | None, list[str]]] = []

    def encode(self, texts, kind="query", instruction=None, batch_size=32):
        if instruction is not None and not isinstance(instruction, str):
            assert len(instruction) == len(texts), "one instruction per text"
            instruction = list(instruction)
        self.calls.append((kind, instruction, list(texts)))
        rows = np.array([self.vectors[text] for text in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def meta(name, task_type, symmetric=False, instruction="Find it"):
    return {"name": name, "type": task_type, "instruction": instruction, "symmetric": symmetric,
            "source": "test", "license": "CC0", "description": "hand-made"}


# q1 ranks d1 (cos 1), d3 (0.8), d2 (0.6); q2 ranks d2 (0.8), d3 (0.6), d1 (0).
RETRIEVAL_VECTORS = {"cats": [1, 0], "dogs": [0, 1], "orphan": [1, 1],
                     "doc one": [1, 0], "doc two": [0.6, 0.8], "doc three": [0.8, 0.6]}


def write_retrieval(folder, symmetric=False):
    return write_task(folder, meta(folder.name, "retrieval", symmetric), {
        "queries.jsonl": [{"id": "q1", "text": "cats"}, {"id": "q2", "text": "dogs"}, {"id": "q3", "text": "orphan"}],
        "corpus.jsonl": [{"id": "d1", "text": "doc one"}, {"id": "d2", "text": "doc two"},
                         {"id": "d3", "text": "doc three"}],
        "qrels.jsonl": [{"query_id": "q1", "doc_id": "d3", "relevance": 1},
                        {"query_id": "q2", "doc_id": "d2", "relevance": 2},
                        {"query_id": "q2", "doc_id": "d1", "relevance": 1},
                        {"query_id": "q3", "doc_id": "d1", "relevance": 0}],  # grade 0: q3 is skipped
    })


def test_retrieval_metrics_and_encoding_roles(tmp_path):
    write_retrieval(tmp_path / "ret")
    encoder = LookupEncoder(RETRIEVAL_VECTORS)
    result = evaluate_task(encoder, tmp_path / "ret")
    # MRR: q1 first hit at rank 2, q2 at rank 1 -> (1/2 + 1) / 2.
    # nDCG: q1 (1/log2 3) / 1 = 0.630930; q2 gains (2, 0, 1): (2 + 1/log2 4) / (2 + 1/log2 3) = 2.5 / 2.630930
    #       = 0.950234; mean 0.790582.
    # Recall@1: q1 0, q2 1 of 2 -> 0.25.
    assert result == pytest.approx({"mrr@10": 0.75, "ndcg@10": 0.790582, "recall@1": 0.25,
                                    "recall@10": 1.0, "recall@100": 1.0}, abs=1e-6)
    assert encoder.calls == [("query", ["Find it", "Find it"], ["cats", "dogs"]),  # q3 has no relevant document
                             ("document", None, ["doc one", "doc two", "doc three"])]


def test_a_query_rows_own_instruction_wins_over_the_tasks(tmp_path):
    """A dev set mixing datasets carries each query's instruction; all queries go in one call, in order."""
    write_task(tmp_path / "mixed", meta("mixed", "retrieval"), {
        "queries.jsonl": [{"id": "q1", "text": "cats", "instruction": "Find cats"}, {"id": "q2", "text": "dogs"}],
        "corpus.jsonl": [{"id": "d1", "text": "doc one"}, {"id": "d2", "text": "doc two"}, {"id": "d3", "text": "doc three"}],
        "qrels.jsonl": [{"query_id": "q1", "doc_id": "d3", "relevance": 1}, {"query_id": "q2", "doc_id": "d2", "relevance": 2},
                        {"query_id": "q2", "doc_id": "d1", "relevance": 1}],
    })
    encoder = LookupEncoder(RETRIEVAL_VECTORS)
    result = evaluate_task(encoder, tmp_path / "mixed")
    assert encoder.calls[0] == ("query", ["Find cats", "Find it"], ["cats", "dogs"])
    assert result["mrr@10"] == pytest.approx(0.75)  # the same ranking as in the single-instruction test


def test_symmetric_retrieval_encodes_documents_as_instructed_queries(tmp_path):
    write_retrieval(tmp_path / "sym", symmetric=True)
    encoder = LookupEncoder(RETRIEVAL_VECTORS)
    evaluate_task(encoder, tmp_path / "sym")
    assert [(kind, instruction) for kind, instruction, _ in encoder.calls] == [("query", ["Find it", "Find it"]),
                                                                              ("query", "Find it")]


def test_retrieval_max_examples_keeps_relevant_documents_and_ten_per_query(tmp_path):
    corpus = [{"id": f"d{i}", "text": f"doc {i}"} for i in range(100)]
    queries = [{"id": f"q{i}", "text": f"query {i}"} for i in range(20)]
    qrels = [{"query_id": f"q{i}", "doc_id": f"d{5 * i}", "relevance": 1} for i in range(20)]
    write_task(tmp_path / "big", meta("big", "retrieval"),
               {"queries.jsonl": queries, "corpus.jsonl": corpus, "qrels.jsonl": qrels})
    vectors = {row["text"]: [1.0, i + 1.0] for i, row in enumerate(corpus + queries)}
    first, second = LookupEncoder(vectors), LookupEncoder(vectors)
    evaluate_task(first, tmp_path / "big", max_examples=3)
    evaluate_task(second, tmp_path / "big", max_examples=3)
    query_texts, document_texts = first.calls[0][2], first.calls[1][2]
    assert len(query_texts) == 3 and len(document_texts) == 30
    for text in query_texts:  # query i's relevant document is d(5i)
        assert f"doc {5 * int(text.split()[1])}" in document_texts
    assert first.calls == second.calls  # the sample is seeded


def test_sts_spearman_of_cosines_with_each_text_encoded_once(tmp_path):
    write_task(tmp_path / "sts", meta("sts", "sts", symmetric=True), {"pairs.jsonl": [
        {"text1": "a", "text2": "b", "score": 5}, {"text1": "a", "text2": "c", "score": 3.0},
        {"text1": "b", "text2": "c", "score": 1}]})
    encoder = LookupEncoder({"a": [1, 0], "b": [0.8, 0.6], "c": [0, 1]})
    # cosines (0.8, 0, 0.6) rank (3, 1, 2); scores rank (3, 2, 1); centred (1,-1,0)·(1,0,-1) = 1 over 2 -> 0.5.
    assert evaluate_task(encoder, tmp_path / "sts") == pytest.approx({"spearman": 0.5})
    assert encoder.calls == [("query", "Find it", ["a", "b", "c"])]


def test_classification_probe_and_knn_accuracy(tmp_path):
    train = [{"text": f"x{i}", "label": "x"} for i in range(3)] + [{"text": f"y{i}", "label": "y"} for i in range(3)]
    test = [{"text": "tx", "label": "x"}, {"text": "ty", "label": "y"}, {"text": "tz", "label": "y"}]
    write_task(tmp_path / "cls", meta("cls", "classification"), {"train.jsonl": train, "test.jsonl": test})
    vectors = {"x0": [1, 0], "x1": [0.9, 0.1], "x2": [0.95, 0.2], "y0": [0, 1], "y1": [0.1, 0.9], "y2": [0.2, 1],
               "tx": [1, 0.05], "ty": [0.05, 1], "tz": [1, 0.1]}  # tz sits among the x's but is labelled y
    result = evaluate_task(LookupEncoder(vectors), tmp_path / "cls")
    assert result == pytest.approx({"logreg_accuracy": 2 / 3, "knn_accuracy": 2 / 3})


def test_clustering_v_measure_with_k_from_labels(tmp_path):
    centres = {"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1]}
    items = [{"text": f"{label}{i}", "label": label} for label in centres for i in range(4)]
    vectors = {f"{label}{i}": np.add(centre, 0.05 * i).tolist() for label, centre in centres.items() for i in range(4)}
    write_task(tmp_path / "clu", meta("clu", "clustering", symmetric=True), {"items.jsonl": items})
    assert evaluate_task(LookupEncoder(vectors), tmp_path / "clu") == pytest.approx({"v_measure": 1.0})


def test_malformed_rows_name_file_and_line(tmp_path):
    write_retrieval(tmp_path / "ret")
    queries = tmp_path / "ret" / "queries.jsonl"
    queries.write_text('{"id": "q1", "text": "cats"}\n{"id": "q2", "text": 7}\n')
    with pytest.raises(DataFormatError, match=r"queries.jsonl:2: 'text' must be str, got 7"):
        evaluate_task(LookupEncoder(RETRIEVAL_VECTORS), tmp_path / "ret")
    queries.write_text('{"id": "q1", "text": "cats"}\n{"id": "q2", "text": "dogs"\n')
    with pytest.raises(DataFormatError, match=r"queries.jsonl:2: invalid JSON"):
        evaluate_task(LookupEncoder(RETRIEVAL_VECTORS), tmp_path / "ret")
    with pytest.raises(DataFormatError, match=r"x.jsonl:1: 'relevance' must be int, got True"):
        (tmp_path / "x.jsonl").write_text('{"query_id": "q", "doc_id": "d", "relevance": true}\n')
        read_task_file(tmp_path / "x.jsonl", ("query_id", "doc_id", "relevance"))


def test_qrels_naming_unknown_document_is_an_error(tmp_path):
    write_retrieval(tmp_path / "ret")
    with open(tmp_path / "ret" / "qrels.jsonl", "a") as qrels:
        qrels.write('{"query_id": "q1", "doc_id": "d9", "relevance": 1}\n')
    with pytest.raises(DataFormatError, match=r"qrels.jsonl: row 5: doc_id 'd9' is not in the task"):
        evaluate_task(LookupEncoder(RETRIEVAL_VECTORS), tmp_path / "ret")
    # check_task finds it without an encoder, as training does before it starts.
    with pytest.raises(DataFormatError, match=r"qrels.jsonl: row 5: doc_id 'd9' is not in the task"):
        check_task(tmp_path / "ret")


def test_task_json_checks(tmp_path):
    with pytest.raises(BadInputError, match="no task.json"):
        load_task_info(tmp_path)
    with pytest.raises(BadInputError, match="nope: no such task folder"):
        load_task_info(tmp_path / "nope")
    (tmp_path / "task.json").write_text(json.dumps({**meta("t", "ranking"), "type": "ranking"}))
    with pytest.raises(DataFormatError, match="unknown type 'ranking'"):
        load_task_info(tmp_path)
    (tmp_path / "task.json").write_text(json.dumps({"name": "t", "type": "sts"}))
    with pytest.raises(DataFormatError, match="missing key"):
        load_task_info(tmp_path)
    write_retrieval(tmp_path / "ret")
    with pytest.raises(ValueError, match="max_examples"):
        evaluate_task(LookupEncoder(RETRIEVAL_VECTORS), tmp_path / "ret", max_examples=0)


def test_real_encoder_finds_identical_text_in_symmetric_retrieval(tmp_path, tiny_model_dir):
    texts = ["the quick brown fox", "a sleepy hound", "birds fly south in winter", "rivers and mountains",
             "cats and dogs", "the sea at night"]
    write_task(tmp_path / "same", meta("same", "retrieval", symmetric=True), {
        "queries.jsonl": [{"id": f"q{i}", "text": t} for i, t in enumerate(texts)],
        "corpus.jsonl": [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)],
        "qrels.jsonl": [{"query_id": f"q{i}", "doc_id": f"d{i}", "relevance": 1} for i in range(len(texts))],
    })
    for template_set in ("echo", "classical"):
        encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), mode=template_set, pooling="mean", dtype="float32")
        result = evaluate_task(encoder, tmp_path / "same", batch_size=4)
        # Both sides go through the same query template, so each query's twin has cosine 1.
        assert result["mrr@10"] == pytest.approx(1.0) and result["recall@1"] == pytest.approx(1.0)
