"""Local evaluation tasks: read a task folder, embed it with an encoder, return its metrics.

A task folder holds ``task.json`` (name, type, instruction, symmetric, source, license,
description) and the JSONL files of its type, as listed in :data:`data.formats.TASK_FILES`;
:func:`data.prepare.prepare_eval_tasks` writes them and so does the toy diagnostic
(:func:`data.toy.prepare_toy_task`, type ``toy``). Each type has one evaluate function;
:func:`evaluate_task` picks it. They are plain functions of (encoder, folder) with no state,
so the training loop scores its dev set with exactly the code the reports use.

``max_examples`` caps the expensive side of a task with a seeded sample (the same rows for
every encoder): retrieval keeps N queries and a corpus of their relevant documents plus
sampled distractors up to 10·N documents; STS keeps N pairs; classification N train and N
test rows; clustering N items; toy N triples per structure.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data.formats import TASK_FILES, TASK_META_KEYS
from data.toy import prepare_toy_task
from echo_base import BadInputError, DataFormatError, iter_jsonl, shown
from evaluation import metrics

# The key each JSONL row must carry and the JSON types its value may have.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "text": (str,),
    "query_id": (str,),
    "doc_id": (str,),
    "relevance": (int,),
    "text1": (str,),
    "text2": (str,),
    "score": (int, float),
    "label": (str, int),
    "structure": (str,),
    "query": (str,),
    "positive": (str,),
    "negative": (str,),
}

# What the summary table and chart show for each task type.
MAIN_METRICS: dict[str, list[str]] = {
    "retrieval": ["ndcg@10"],
    "sts": ["spearman"],
    "classification": ["logreg_accuracy"],
    "clustering": ["v_measure"],
    "toy": ["S1", "S2"],
}

# Each task contributes at most this many distractor documents per kept query under max_examples.
_CORPUS_PER_QUERY = 10
_SAMPLE_SEED = 0


class Encoder(Protocol):
    """Anything that embeds texts the way :class:`models.EchoEncoder` does.

    ``instruction`` is one instruction for every text, or a sequence with one per text
    (None where a text takes none).
    """

    def encode(
        self,
        texts: list[str],
        kind: str = ...,
        instruction: str | Sequence[str | None] | None = ...,
        batch_size: int = ...,
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class TaskInfo:
    """The contents of ``task.json``."""

    name: str
    type: str
    instruction: str
    symmetric: bool
    source: str
    license: str
    description: str


def load_task_info(task_dir: Path) -> TaskInfo:
    """Read and check ``task.json``; raises DataFormatError naming the file and the bad key,
    BadInputError naming the folder when it is none or holds no task.json."""
    path = Path(task_dir) / "task.json"
    if not Path(task_dir).is_dir():
        raise BadInputError(f"{task_dir}: no such task folder")
    if not path.is_file():
        raise BadInputError(f"{path}: no task.json (is {task_dir} a task folder?)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}: invalid JSON ({error.msg})") from None
    if not isinstance(meta, dict):
        raise DataFormatError(f"{path}: must hold a JSON object")
    missing = [key for key in TASK_META_KEYS if key not in meta]
    if missing:
        raise DataFormatError(f"{path}: missing key(s) {missing}")
    if meta["type"] not in TASK_FILES:
        raise DataFormatError(f"{path}: unknown type {meta['type']!r}; expected one of {sorted(TASK_FILES)}")
    if not isinstance(meta["symmetric"], bool):
        raise DataFormatError(f"{path}: 'symmetric' must be true or false")
    for key in TASK_META_KEYS:
        if key != "symmetric" and not isinstance(meta[key], str):
            raise DataFormatError(f"{path}: {key!r} must be a string")
    return TaskInfo(**{key: meta[key] for key in TASK_META_KEYS})


def read_task_file(path: Path, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Read a task JSONL file whose rows must carry ``keys`` with the right JSON types.

    Raises DataFormatError ``<file>:<line>: <problem>`` on the first bad row, and when the
    file holds no rows; FileNotFoundError when it does not exist.
    """
    rows = []
    for line_number, row in iter_jsonl(path):
        where = f"{path}:{line_number}"
        for key in keys:
            if key not in row:
                raise DataFormatError(f"{where}: missing key {key!r}")
            value = row[key]
            # bool is an int subclass in Python but never a valid relevance, score or label.
            if isinstance(value, bool) or not isinstance(value, _FIELD_TYPES[key]):
                expected = " or ".join(t.__name__ for t in _FIELD_TYPES[key])
                raise DataFormatError(f"{where}: {key!r} must be {expected}, got {shown(value)}")
        rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return rows


def _read(task_dir: Path, info: TaskInfo, file_name: str) -> list[dict[str, Any]]:
    return read_task_file(Path(task_dir) / file_name, TASK_FILES[info.type][file_name])


def check_task(task_dir: str | Path) -> TaskInfo:
    """Read every file of a task folder as evaluating it will, so that a malformed one stops a
    training run before it starts rather than at its end; returns the task's info.

    Raises what :func:`load_task_info` and :func:`read_task_file` raise, and DataFormatError
    for a retrieval qrel naming an unknown id.
    """
    info = load_task_info(Path(task_dir))
    if info.type == "retrieval":
        _retrieval_rows(Path(task_dir), info)
    else:
        for file_name in TASK_FILES[info.type]:
            _read(Path(task_dir), info, file_name)
    return info


def _retrieval_rows(
    task_dir: Path, info: TaskInfo
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, dict[str, int]]]:
    """A retrieval task's query rows, its corpus (id -> text) and its positive grades (query id -> doc id -> grade).

    Raises DataFormatError for a qrel naming an unknown id, and when no query has a relevant document.
    """
    query_rows = _read(task_dir, info, "queries.jsonl")
    query_ids = {row["id"] for row in query_rows}
    corpus = {row["id"]: row["text"] for row in _read(task_dir, info, "corpus.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    qrels_path = Path(task_dir) / "qrels.jsonl"
    for line_number, row in enumerate(_read(task_dir, info, "qrels.jsonl"), start=1):
        for key, known in (("query_id", query_ids), ("doc_id", corpus)):
            if row[key] not in known:
                raise DataFormatError(f"{qrels_path}: row {line_number}: {key} {shown(row[key])} is not in the task")
        if row["relevance"] > 0:
            qrels.setdefault(row["query_id"], {})[row["doc_id"]] = row["relevance"]
    if not qrels:
        raise DataFormatError(f"{qrels_path}: no query has a relevant document")
    return query_rows, corpus, qrels


def _sample(rows: list, limit: int | None) -> list:
    """A seeded sample of ``limit`` rows kept in file order (all rows when ``limit`` is None)."""
    if limit is None or len(rows) <= limit:
        return rows
    kept = sorted(random.Random(_SAMPLE_SEED).sample(range(len(rows)), limit))
    return [rows[i] for i in kept]


def _encode_unique(encoder: Encoder, texts: list[str], kind: str, instruction: str | None, batch_size: int) -> np.ndarray:
    """Encode each distinct text once and return one row per input text."""
    unique = list(dict.fromkeys(texts))
    vectors = encoder.encode(unique, kind=kind, instruction=instruction, batch_size=batch_size)
    position = {text: i for i, text in enumerate(unique)}
    return vectors[[position[text] for text in texts]]


def _instruction(info: TaskInfo) -> str | None:
    return info.instruction or None


def evaluate_retrieval(
    encoder: Encoder, task_dir: Path, info: TaskInfo, max_examples: int | None = None, batch_size: int = 32
) -> dict[str, float]:
    """MRR@10, nDCG@10 and Recall@1/10/100 of ranking the corpus by cosine for each query.

    Queries are encoded as ``kind="query"``, each with its row's instruction or else the
    task's; documents as ``kind="document"``, or as queries with the task instruction when
    the task is symmetric. Queries without a relevant document are skipped; a qrel naming
    an unknown id is an error.
    """
    query_rows, corpus, qrels = _retrieval_rows(task_dir, info)
    queries = {row["id"]: row["text"] for row in query_rows}
    # A query row may carry its own instruction (a dev set mixing datasets does); else the task's.
    query_instruction = {row["id"]: row.get("instruction") or _instruction(info) for row in query_rows}
    query_ids = _sample([qid for qid in queries if qid in qrels], max_examples)
    doc_ids = list(corpus)
    if max_examples is not None:
        relevant = {doc for qid in query_ids for doc in qrels[qid]}
        distractors = [doc for doc in doc_ids if doc not in relevant]
        room = max(_CORPUS_PER_QUERY * len(query_ids) - len(relevant), 0)
        kept = relevant | set(_sample(distractors, room))
        doc_ids = [doc for doc in doc_ids if doc in kept]
    query_vectors = encoder.encode(
        [queries[qid] for qid in query_ids],
        kind="query",
        instruction=[query_instruction[qid] for qid in query_ids],
        batch_size=batch_size,
    )
    document_kind, document_instruction = ("query", _instruction(info)) if info.symmetric else ("document", None)
    document_vectors = encoder.encode(
        [corpus[doc] for doc in doc_ids], kind=document_kind, instruction=document_instruction, batch_size=batch_size
    )
    doc_index = {doc: i for i, doc in enumerate(doc_ids)}
    relevance = np.zeros((len(query_ids), len(doc_ids)), dtype=np.int64)
    for row, qid in enumerate(query_ids):
        for doc, grade in qrels[qid].items():
            relevance[row, doc_index[doc]] = grade
    scores = np.asarray(query_vectors, dtype=np.float64) @ np.asarray(document_vectors, dtype=np.float64).T
    return {
        "mrr@10": metrics.mrr_at_k(scores, relevance, 10),
        "ndcg@10": metrics.ndcg_at_k(scores, relevance, 10),
        "recall@1": metrics.recall_at_k(scores, relevance, 1),
        "recall@10": metrics.recall_at_k(scores, relevance, 10),
        "recall@100": metrics.recall_at_k(scores, relevance, 100),
    }


def evaluate_sts(
    encoder: Encoder, task_dir: Path, info: TaskInfo, max_examples: int | None = None, batch_size: int = 32
) -> dict[str, float]:
    """Spearman correlation between the cosine of each pair and its gold score (both sides as queries)."""
    pairs = _sample(_read(task_dir, info, "pairs.jsonl"), max_examples)
    texts = [pair["text1"] for pair in pairs] + [pair["text2"] for pair in pairs]
    vectors = _encode_unique(encoder, texts, "query", _instruction(info), batch_size)
    cosines = metrics.cosine_rows(vectors[: len(pairs)], vectors[len(pairs) :])
    return {"spearman": metrics.spearman(cosines, np.array([pair["score"] for pair in pairs], dtype=np.float64))}


def evaluate_classification(
    encoder: Encoder, task_dir: Path, info: TaskInfo, max_examples: int | None = None, batch_size: int = 32
) -> dict[str, float]:
    """Accuracy of a logistic-regression probe and of 5-nearest-neighbour voting on the embeddings."""
    train = _sample(_read(task_dir, info, "train.jsonl"), max_examples)
    test = _sample(_read(task_dir, info, "test.jsonl"), max_examples)
    instruction = _instruction(info)
    train_vectors = _encode_unique(encoder, [row["text"] for row in train], "query", instruction, batch_size)
    test_vectors = _encode_unique(encoder, [row["text"] for row in test], "query", instruction, batch_size)
    train_labels, test_labels = [row["label"] for row in train], [row["label"] for row in test]
    return {
        "logreg_accuracy": metrics.accuracy(
            metrics.logistic_regression_predict(train_vectors, train_labels, test_vectors), test_labels
        ),
        "knn_accuracy": metrics.accuracy(metrics.knn_predict(train_vectors, train_labels, test_vectors, k=5), test_labels),
    }


def evaluate_clustering(
    encoder: Encoder, task_dir: Path, info: TaskInfo, max_examples: int | None = None, batch_size: int = 32
) -> dict[str, float]:
    """V-measure of seeded k-means (k = number of gold labels) against the gold labels."""
    items = _sample(_read(task_dir, info, "items.jsonl"), max_examples)
    labels = [item["label"] for item in items]
    vectors = _encode_unique(encoder, [item["text"] for item in items], "query", _instruction(info), batch_size)
    clusters = metrics.kmeans(vectors, k=len(set(labels)), seed=_SAMPLE_SEED)
    return {"v_measure": metrics.v_measure(labels, clusters.tolist())}


def evaluate_toy(
    encoder: Encoder, task_dir: Path, info: TaskInfo, max_examples: int | None = None, batch_size: int = 32
) -> dict[str, float]:
    """Per structure (S1, S2), the fraction of triples with cos(q, s+) > cos(q, s-)."""
    triples = _read(task_dir, info, "triples.jsonl")
    results = {}
    for structure in sorted({row["structure"] for row in triples}):
        chosen = _sample([row for row in triples if row["structure"] == structure], max_examples)
        texts = [row[key] for row in chosen for key in ("query", "positive", "negative")]
        vectors = encoder.encode(texts, kind="query", instruction=_instruction(info), batch_size=batch_size)
        results[structure] = metrics.positive_win_rate(vectors[0::3], vectors[1::3], vectors[2::3])
    return results


_EVALUATORS: dict[str, Callable[..., dict[str, float]]] = {
    "retrieval": evaluate_retrieval,
    "sts": evaluate_sts,
    "classification": evaluate_classification,
    "clustering": evaluate_clustering,
    "toy": evaluate_toy,
}


def evaluate_task(
    encoder: Encoder, task_dir: str | Path, max_examples: int | None = None, batch_size: int = 32
) -> dict[str, float]:
    """Evaluate ``encoder`` on one task folder and return metric name -> value.

    Raises BadInputError for a missing folder or file, DataFormatError naming file and line
    for malformed contents (both ValueErrors), ValueError for a bad ``max_examples``.
    """
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples}")
    info = load_task_info(Path(task_dir))
    return _EVALUATORS[info.type](encoder, Path(task_dir), info, max_examples, batch_size)


def resolve_tasks(names: list[str]) -> dict[str, Path]:
    """Map task names to folders: ``toy``, a task folder path, a prepared task name, or ``all``.

    ``all`` means every task that :func:`data.prepare.prepare_eval_tasks` provides plus the
    toy diagnostic. Prepared tasks are built on first use (cached afterwards). Raises
    BadInputError naming an unknown task and listing the known ones.
    """
    resolved: dict[str, Path] = {}
    prepared: dict[str, Path] | None = None
    for name in names:
        if name == "toy":
            resolved["toy"] = prepare_toy_task()
        elif (Path(name) / "task.json").is_file():
            resolved[load_task_info(Path(name)).name] = Path(name)
        else:
            if prepared is None:
                from data.prepare import prepare_eval_tasks  # imported here: it pulls in the data sources

                prepared = prepare_eval_tasks()
            if name == "all":
                resolved.update(prepared)
                resolved["toy"] = prepare_toy_task()
            elif name in prepared:
                resolved[name] = prepared[name]
            else:
                raise BadInputError(
                    f"unknown task {shown(name)}: use 'all', 'toy', a task folder, or one of {sorted(prepared)}"
                )
    return resolved
