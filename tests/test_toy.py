"""The toy S1/S2 diagnostic: the generator's structure invariants, its task folder, its scoring and its CLI."""

import hashlib
import json

import numpy as np
import pytest

from data.sources.toy import FIRST_HALVES, SECOND_HALVES, STRUCTURES, generate_triples
from data.toy import prepare_toy_task, write_toy_task
from evaluation.tasks import evaluate_task
from evaluation.toy import main
from models import EchoEncoder


def test_paraphrase_sets_are_large_and_distinct():
    assert len(FIRST_HALVES) >= 24 and len(SECOND_HALVES) >= 24
    for sets in (FIRST_HALVES, SECOND_HALVES):
        phrases = [phrase for paraphrases in sets for phrase in paraphrases]
        assert len(phrases) == len(set(phrases)), "a phrase appears in two paraphrase sets"
        assert all(len(paraphrases) >= 3 for paraphrases in sets)


@pytest.mark.parametrize("structure", ["S1", "S2"])
def test_triples_share_the_right_half(structure):
    triples = generate_triples(structure, n=300, seed=0)
    assert len(triples) == 300
    assert len({(t.query.first_set, t.query.second_set) for t in triples}) == 300  # distinct queries
    shared_verbatim = 0
    for t in triples:
        q, pos, neg = t.query, t.positive, t.negative
        # s+ paraphrases both halves: same sets, different wording.
        assert (pos.first_set, pos.second_set) == (q.first_set, q.second_set)
        assert pos.first_variant != q.first_variant and pos.second_variant != q.second_variant
        if structure == "S1":  # only the beginning discriminates
            assert neg.second_set == q.second_set and neg.first_set != q.first_set
            shared_verbatim += neg.second_variant == q.second_variant
        else:  # S2: only the end discriminates
            assert neg.first_set == q.first_set and neg.second_set != q.second_set
            shared_verbatim += neg.first_variant == q.first_variant
        assert len({q.text, pos.text, neg.text}) == 3
    # The shared half is sometimes verbatim and sometimes paraphrased (1 of 3 variants: ~100).
    assert 50 < shared_verbatim < 150


def test_generation_is_deterministic_and_seeded():
    assert generate_triples("S1", 50, seed=3) == generate_triples("S1", 50, seed=3)
    assert generate_triples("S1", 50, seed=3) != generate_triples("S1", 50, seed=4)
    assert generate_triples("S1", 50)[0].query != generate_triples("S2", 50)[0].query


def test_generation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="structure"):
        generate_triples("S3", 10)
    with pytest.raises(ValueError, match="n must be between 1 and 900"):
        generate_triples("S1", 901)


def test_text_joins_the_two_halves():
    t = generate_triples("S2", 1, seed=0)[0]
    first, second = t.query.halves
    assert t.query.text == first[0].upper() + first[1:] + " " + second + "."


def test_default_task_folder_is_unchanged(tmp_path, monkeypatch):
    """The README's toy figures come from n=300, seed=0: these triples must not drift."""
    monkeypatch.setenv("ECHO_CACHE", str(tmp_path))
    task = prepare_toy_task()
    assert task == tmp_path / "toy" / "n300-seed0"
    triples = (task / "triples.jsonl").read_bytes()
    # Digest of the file the toy generator wrote before it moved from evaluation/ to data/.
    assert hashlib.sha256(triples).hexdigest() == "f3c2cc5d8d9603f855ec8e0f0264e45178664c39f8c78c6099de5be3351a6db5"
    first = json.loads(triples.decode().splitlines()[0])
    assert first == {"structure": "S1", "query": "The poet performed her most recent poem in mid-afternoon.",
                     "positive": "The poet read her latest poem in the middle of the afternoon.",
                     "negative": "The lad fractured his arm in the middle of the afternoon."}
    meta = json.loads((task / "task.json").read_text())
    assert (meta["type"], meta["instruction"], meta["symmetric"]) == ("toy", "", True)


class HalfSetEncoder:
    """Embeds a toy sentence as the one-hot of the paraphrase set(s) of the halves it looks at."""

    def __init__(self, halves: tuple[str, ...]):
        self.halves = halves
        self.first = {p: i for i, ps in enumerate(FIRST_HALVES) for p in ps}
        self.second = {p: i for i, ps in enumerate(SECOND_HALVES) for p in ps}

    def encode(self, texts, kind="query", instruction=None, batch_size=32):
        assert kind == "query" and instruction is None
        vectors = np.zeros((len(texts), len(FIRST_HALVES) + len(SECOND_HALVES)), dtype=np.float32)
        for row, text in enumerate(texts):
            body = text[0].lower() + text[1:-1]
            first = max((p for p in self.first if body.startswith(p + " ")), key=len)
            if "first" in self.halves:
                vectors[row, self.first[first]] = 1
            if "second" in self.halves:
                vectors[row, len(FIRST_HALVES) + self.second[body[len(first) + 1 :]]] = 1
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_toy_task_scores_what_each_structure_tests(tmp_path):
    task = write_toy_task(tmp_path / "toy", n=200, seed=1)
    # Seeing both halves separates every triple.
    assert evaluate_task(HalfSetEncoder(("first", "second")), task) == {"S1": 1.0, "S2": 1.0}
    # Seeing only the end: in S1 s- shares the end with q (always a tie, a loss); in S2 the end differs.
    assert evaluate_task(HalfSetEncoder(("second",)), task) == {"S1": 0.0, "S2": 1.0}
    assert evaluate_task(HalfSetEncoder(("first",)), task, max_examples=50) == {"S1": 1.0, "S2": 0.0}


def independent_win_rate(encoder, structure, n, batch_size):
    """The toy score counted straight from generated triples and numpy cosines, no evaluation code."""
    triples = generate_triples(structure, n, seed=0)
    texts = [sentence.text for t in triples for sentence in (t.query, t.positive, t.negative)]
    vectors = encoder.encode(texts, kind="query", batch_size=batch_size).astype(np.float64)
    query, positive, negative = vectors[0::3], vectors[1::3], vectors[2::3]
    norm = np.linalg.norm
    to_positive = (query * positive).sum(axis=1) / (norm(query, axis=1) * norm(positive, axis=1))
    to_negative = (query * negative).sum(axis=1) / (norm(query, axis=1) * norm(negative, axis=1))
    return sum(bool(p > q) for p, q in zip(to_positive, to_negative)) / n


def test_cli_prints_the_structure_by_setting_table(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("ECHO_CACHE", str(tmp_path))
    assert main(["--model", str(tiny_model_dir), "--pooling", "mean,last", "--triples", "10", "--batch-size", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    labels = ["classical_sentence/mean", "classical_sentence/last", "echo_sentence/mean", "echo_sentence/last"]
    assert "| task | metric | " + " | ".join(labels) + " |" in lines
    rows = {line.split(" | ")[1]: line.strip("| ").split(" | ")[2:] for line in lines if line.startswith("| toy |")}
    assert set(rows) == set(STRUCTURES)
    for column, label in enumerate(labels):
        template_set, pooling = label.split("/")
        encoder = EchoEncoder.from_pretrained(str(tiny_model_dir), mode=template_set, pooling=pooling)
        for structure in STRUCTURES:
            expected = independent_win_rate(encoder, structure, 10, batch_size=8)
            assert rows[structure][column].strip("*") == f"{expected:.4f}", (label, structure)
    assert main(["--model", str(tiny_model_dir), "--triples", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("n must be between 1 and 900 (distinct queries), got 0")


def test_cli_accepts_the_old_modes_flag_with_a_warning(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("ECHO_CACHE", str(tmp_path))
    assert main(["--model", str(tiny_model_dir), "--modes", "echo_sentence", "--pooling", "mean", "--triples", "5"]) == 0
    captured = capsys.readouterr()
    assert "| task | metric | echo_sentence/mean |" in captured.out.splitlines()
    assert "warning: --modes is deprecated; use --template-sets" in captured.err.splitlines()
