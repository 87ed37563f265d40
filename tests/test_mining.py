"""Hard-negative mining: the rank window, each false-negative test, planted false negatives with and without
the filter under a scorer whose cosines the test sets, and the command end to end on a tiny random Llama."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import evaluation.mining
from data.formats import TrainingExample, read_examples
from data.hard_negatives import MiningRule, mine_hard_negatives, near_duplicate_similarity, normalized_text
from data.mine import main
from evaluation.mining import (PLANTED_KINDS, copy_of, false_negative_rates, format_table, measure, near_copy_of,
                               plant_false_negatives)


class SetScorer:
    """An ``encode`` whose cosines the test sets: cos(query, candidate) = ``scores[query][candidate]``, else 0.

    Each query owns one axis; a candidate scored s against it is s on that axis plus sqrt(1 - s^2)
    on an axis of its own, so it is orthogonal to every other query. A candidate is scored against
    one query at most.
    """

    WIDTH = 1024  # the queries' axes, then one axis per candidate text

    def __init__(self, scores: dict[str, dict[str, float]]) -> None:
        self.scores = scores
        self.queries = list(scores)
        self.own_axis: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, texts, kind, instructions):
        self.calls.append((kind, len(texts)))
        vectors = np.zeros((len(texts), self.WIDTH))
        for row, text in enumerate(texts):
            if kind == "query":
                vectors[row, self.queries.index(text)] = 1.0
                continue
            owner = next((query for query in self.queries if text in self.scores[query]), None)
            score = self.scores[owner][text] if owner else 0.0
            if owner:
                vectors[row, self.queries.index(owner)] = score
            axis = self.own_axis.setdefault(text, len(self.queries) + len(self.own_axis))
            vectors[row, axis] = math.sqrt(1 - score**2)
        return vectors


def _example(query: str, positive: str, negatives: tuple[str, ...] = ()) -> TrainingExample:
    return TrainingExample(query, positive, negatives, "Find the definition", "defs")


def test_normalized_text_and_the_trigram_similarity_by_hand():
    assert normalized_text("  Café au-lait,  TRÈS bon! ") == "cafe au lait tres bon"
    assert normalized_text("Extremely hungry.") == normalized_text("extremely   hungry")
    # " ab " and " abc ": trigrams {" ab", "ab "} and {" ab", "abc", "bc "}: 1 shared of 4.
    assert near_duplicate_similarity("ab", "ABC") == pytest.approx(1 / 4)
    assert near_duplicate_similarity("the cultivation of plants", "The cultivation of plants!") == 1.0
    assert copy_of("extremely hungry") == "Extremely hungry." and copy_of("A cat.") == "A cat"
    assert near_copy_of("a b c d e f") == "a b c e f" and near_copy_of("a b c d e") is None


def test_the_window_counts_ranks_past_known_positives_and_fills_from_below():
    query = "hungry: a hungry boy"
    scores = {query: {"extremely hungry": 0.9, "second positive": 0.95, query: 0.99,
                      "r1": 0.8, "r2": 0.7, "r3": 0.6, "r4": 0.5, "r5": 0.4}}
    examples = [_example(query, "extremely hungry", ("r5", "r4", "r3", "r2", "r1", query)),
                _example(query, "second positive")]
    unfiltered = MiningRule(first_rank=2, last_rank=3, negatives=2, filter_false_negatives=False)
    mined, stats = mine_hard_negatives(examples, SetScorer(scores), unfiltered)
    # The query's own text and both of its positives are never candidates, so r1 is rank 1.
    assert [example.negatives for example in mined] == [("r2", "r3"), ("r2", "r3")]
    assert [(example.query, example.positive, example.instruction, example.dataset) for example in mined] == [
        (example.query, example.positive, example.instruction, example.dataset) for example in examples]
    assert (stats.negatives, stats.short_rows, stats.from_below_window) == (4, 0, 0)
    # Within 0.05 of the positive's 0.9, with a margin of 0.25: r1 (0.8) and r2 (0.7) go, r3 and r4 fill.
    mined, stats = mine_hard_negatives(examples[:1], SetScorer(scores),
                                       MiningRule(first_rank=1, last_rank=2, negatives=2, margin=0.25))
    assert mined[0].negatives == ("r3", "r4")
    assert stats.dropped["score"] == 2 and stats.from_below_window == 2
    # margin=None: no score test, so the window's own r1 and r2 stay.
    mined, _ = mine_hard_negatives(examples[:1], SetScorer(scores),
                                   MiningRule(first_rank=1, last_rank=2, negatives=2, margin=None))
    assert mined[0].negatives == ("r1", "r2")
    mined, stats = mine_hard_negatives(examples[:1], SetScorer(scores), MiningRule(first_rank=4, last_rank=9, negatives=3,
                                                                                   filter_false_negatives=False))
    assert mined[0].negatives == ("r4", "r5") and stats.short_rows == 1  # the pool ran out


def test_each_test_drops_its_kind_of_likely_false_negative():
    query, positive = "q", "the cultivation of plants in gardens"
    scores = {query: {positive: 0.9, "The cultivation of plants in gardens!": 0.3,  # duplicate, scored low
                      "the cultivation of plants in the gardens": 0.2,  # near duplicate, scored low
                      "horticulture": 0.88,  # a paraphrase: within the margin
                      "the cultivation of rice in paddies": 0.5, "growing crops and livestock": 0.45}}
    rule = MiningRule(first_rank=1, last_rank=10, negatives=10)
    examples = [_example(query, positive, tuple(text for text in scores[query] if text != positive))]
    (mined,), stats = mine_hard_negatives(examples, SetScorer(scores), rule)
    assert mined.negatives == ("the cultivation of rice in paddies", "growing crops and livestock")
    assert stats.dropped == {"score": 1, "duplicate": 1, "near_duplicate": 1}
    (unfiltered,), _ = mine_hard_negatives(examples, SetScorer(scores), MiningRule(1, 10, 10, filter_false_negatives=False))
    assert len(unfiltered.negatives) == 5


def test_a_corpus_is_the_pool_and_a_positive_outside_it_is_scored_but_never_a_negative():
    scores = {"q": {"p": 0.9, "c1": 0.5, "c2": 0.7, "n": 0.99}}
    scorer = SetScorer(scores)
    (mined,), _ = mine_hard_negatives([_example("q", "p", ("n",))], scorer, MiningRule(1, 5, 5, margin=0.1), corpus=["c1", "c2"])
    assert mined.negatives == ("c2", "c1")  # "n", the file's own negative, is not in the corpus
    assert scorer.calls == [("query", 1), ("document", 3)]  # the corpus and the positive


def test_a_known_pairs_positive_is_never_a_negative_of_its_query():
    # "q" recurs in a row that was not sampled, with positive "p2": that text is a positive, not a negative.
    scores = {"q": {"p": 0.9, "p2": 0.8, "c": 0.5}}
    rule = MiningRule(1, 5, 5, margin=None)
    (unknown,), _ = mine_hard_negatives([_example("q", "p", ())], SetScorer(scores), rule, corpus=["p2", "c"])
    assert unknown.negatives == ("p2", "c")
    (known,), _ = mine_hard_negatives([_example("q", "p", ())], SetScorer(scores), rule, corpus=["p2", "c"],
                                      known_pairs=[_example("q", "p2", ())])
    assert known.negatives == ("c",)


def _planted_synthetic_set():
    """20 queries: positive 0.9, planted copy 0.95, near copy 0.88, paraphrase 0.87, true hard negatives 0.6-0.8."""
    examples, paraphrase_of, scores = [], {}, {}
    for i in range(20):
        query, positive = f"usage {i}", f"the definition number {i} of a word used in a sentence"
        paraphrase_of[positive] = f"what word {i} means"
        negatives = tuple(f"another meaning {i}.{j}" for j in range(5))
        examples.append(_example(query, positive, negatives))
        scores[query] = {positive: 0.9, **{negative: 0.8 - 0.05 * j for j, negative in enumerate(negatives)}}
    planted_set = plant_false_negatives(examples, paraphrase_of)
    kind_scores = {"copy": 0.95, "near_copy": 0.88, "paraphrase": 0.87}
    for query, planted in planted_set.planted.items():
        scores[query].update({text: kind_scores[kind] for text, kind in planted.items()})
    return planted_set, scores


def test_planted_false_negatives_are_mined_without_the_filter_and_never_with_it():
    planted_set, scores = _planted_synthetic_set()
    assert {kind for planted in planted_set.planted.values() for kind in planted.values()} == set(PLANTED_KINDS)
    rows = measure(planted_set, SetScorer(scores), [MiningRule(first_rank=1, last_rank=30, negatives=3)])
    by_filter = {row["filter"]: row for row in rows}
    assert list(by_filter) == ["margin 0.05 + duplicates", "duplicates only", "off"]
    # Without the filter the three planted texts outrank every true negative: all 60 negatives are false.
    assert by_filter["off"]["rates"] == {"all": 1.0, "copy": 1 / 3, "near_copy": 1 / 3, "paraphrase": 1 / 3}
    full = by_filter["margin 0.05 + duplicates"]
    assert full["rates"] == {"all": 0.0, "copy": 0.0, "near_copy": 0.0, "paraphrase": 0.0}
    assert full["negatives"] == by_filter["off"]["negatives"] == 60  # the true negatives fill the rows
    # Filtered, each row's three planted texts (ranks 1-3) fall to the margin: 60 dropped, nothing else.
    assert full["dropped"] == {"score": 60, "duplicate": 0, "near_duplicate": 0} and full["below_window"] == 0
    # Without the margin the copies and near copies still go (by text); the paraphrases, one of 3 negatives, stay.
    duplicates_only = by_filter["duplicates only"]
    assert duplicates_only["rates"] == {"all": 1 / 3, "copy": 0.0, "near_copy": 0.0, "paraphrase": 1 / 3}
    assert duplicates_only["dropped"] == {"score": 0, "duplicate": 20, "near_duplicate": 20}
    table = format_table(rows)
    assert "| 1:30 | margin 0.05 + duplicates | 60 (0) | 0.000 | 0.000 | 0.000 | 0.000 | 60 / 0 / 0 |" in table
    assert "| 1:30 | off | 60 (0) | 1.000 | 0.333 | 0.333 | 0.333 | 0 / 0 / 0 |" in table
    # With a window that starts below the planted texts, every variant mines the same true negatives.
    rows = measure(planted_set, SetScorer(scores), [MiningRule(first_rank=4, last_rank=30, negatives=3)])
    assert [row["rates"]["all"] for row in rows] == [0.0, 0.0, 0.0]


def test_false_negative_rates_count_every_mined_negative_once():
    mined = [_example("q1", "p", ("a", "b", "c", "d")), _example("q2", "p", ("a",))]
    planted = {"q1": {"a": "copy", "c": "paraphrase"}}
    assert false_negative_rates(mined, planted) == {"all": 2 / 5, "copy": 1 / 5, "near_copy": 0.0, "paraphrase": 1 / 5}


def _rows_in(fmt: str) -> list[dict]:
    pairs = [("where do birds fly in winter?", "Many birds migrate south in the winter."),
             ("what do cats eat?", "Cats eat fish and mice."), ("rivers", "Rivers flow to the sea."),
             ("the quick brown fox", "A fast dark fox leaps over a sleepy hound."),
             ("snow on the mountain", "White snow covers the high mountain."), ("bread", "Bakers make bread from flour.")]
    if fmt == "echo":
        return [{"query": q, "positive": p, "negatives": ["Dogs are loyal."], "instruction": "Find it", "dataset": "d"}
                for q, p in pairs]
    if fmt == "flag":
        return [{"query": q, "pos": [p, p + " Indeed."], "neg": ["Dogs are loyal."], "prompt": "Find it"} for q, p in pairs]
    return [{"query": q, "positive": p, "negative": "Dogs are loyal."} for q, p in pairs]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("fmt", ["echo", "flag", "e5"])
def test_the_command_mines_any_format_into_the_projects_format_with_a_real_model(tmp_path, tiny_model_dir, fmt, capsys):
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in _rows_in(fmt)))
    original = read_examples(source, fmt, dataset="train", instruction="Find the text")
    pool = {text for e in original for text in (e.positive, *e.negatives)}
    positives_of = {}
    for example in original:
        positives_of.setdefault(example.query, set()).add(example.positive)
    # Unfiltered, every row gets its two negatives; filtered, a random model's close cosines may leave fewer.
    # Without the score test (--margin none) only duplicates of a positive would go: there are none here.
    for filtering, counts in (["--no-filter"], {2}), ([], {0, 1, 2}), (["--margin", "none"], {2}):
        out = tmp_path / f"mined{len(filtering)}.jsonl"
        status = main(["--model", str(tiny_model_dir), "--input", str(source), "--out", str(out), "--format", fmt,
                       "--ranks", "1:5", "--negatives", "2", "--instruction", "Find the text", "--max-length", "64",
                       *filtering])
        assert status == 0
        mined = read_examples(out, "echo", dataset="unused")
        assert [(e.query, e.positive, e.instruction, e.dataset) for e in mined] == [
            (e.query, e.positive, e.instruction, e.dataset) for e in original]
        for example in mined:
            assert len(example.negatives) in counts and set(example.negatives) <= pool
            assert not set(example.negatives) & positives_of[example.query]
        assert f"mined {out}: {len(original)} examples" in capsys.readouterr().err


@pytest.mark.parametrize("row, option, message", [
    ('{"query": "q", "positive": ""}\n', [], "train.jsonl:2: 'positive' must be a non-empty string"),
    ('{"query": "q", "positive": "p"}\n', ["--ranks", "5:2"], "--ranks: expected FIRST:LAST with 1 <= FIRST <= LAST"),
    ('{"query": "q", "positive": "p"}\n', ["--near-duplicate", "1.5"], "--near-duplicate: must lie in (0, 1]"),
    ('{"query": "q", "positive": "p"}\n', ["--margin", "-1"], "--margin: must be >= 0, got '-1'"),
    ('{"query": "q", "positive": "p"}\n', ["--corpus", "missing.txt"], "missing.txt: no such file"),
])
def test_bad_input_ends_in_one_line_before_the_model_loads_and_writes_nothing(tmp_path, row, option, message, capsys):
    source = tmp_path / "train.jsonl"
    source.write_text('{"query": "a", "positive": "b"}\n' + row)
    out = tmp_path / "mined.jsonl"
    corpus = [str(tmp_path / item) if item.endswith(".txt") else item for item in option]
    # A model that does not exist: every check must fail before it would load.
    assert main(["--model", str(tmp_path / "no-model"), "--input", str(source), "--out", str(out), *corpus]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and message in err
    assert not out.exists() and [path.name for path in tmp_path.iterdir()] == ["train.jsonl"]


def test_an_output_in_a_missing_folder_or_over_the_input_is_refused(tmp_path, capsys):
    source = tmp_path / "train.jsonl"
    source.write_text('{"query": "a", "positive": "b"}\n')
    assert main(["--input", str(source), "--out", str(tmp_path / "nowhere" / "out.jsonl")]) == 2
    assert main(["--input", str(source), "--out", str(source)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "is not an existing folder" in err[0] and "is the input file" in err[1]


@pytest.mark.usefixtures("one_torch_thread")
def test_the_measurement_command_prints_a_row_per_window_and_filter(tiny_model_dir, monkeypatch, capsys):
    planted_set, _ = _planted_synthetic_set()
    requested = []
    monkeypatch.setattr(evaluation.mining, "wordnet_planted_set",
                        lambda count, distractors: requested.append((count, distractors)) or planted_set)
    assert evaluation.mining.main(["--model", str(tiny_model_dir), "--examples", "20", "--distractors", "5",
                                   "--ranks", "1:10,3:20", "--negatives", "2"]) == 0
    assert requested == [(20, 5)]
    table = capsys.readouterr().out.splitlines()
    rows = [line for line in table if line.startswith("| 1:10") or line.startswith("| 3:20")]
    variants = ["margin 0.05 + duplicates", "duplicates only", "off"]
    assert [row.split(" | ")[:2] for row in rows] == [[f"| {window}", variant] for window in ("1:10", "3:20")
                                                       for variant in variants]
    assert all(row.split(" | ")[2].startswith("40 (") for row in rows if "off" in row)  # 20 rows x 2, unfiltered
    assert evaluation.mining.main(["--model", str(tiny_model_dir), "--ranks", "5:1"]) == 2
    assert capsys.readouterr().err.strip().endswith("ranks must satisfy 1 <= first <= last, got 5:1")
