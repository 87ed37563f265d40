"""The toy S1/S2 generator's structure invariants and the win-rate scoring."""

import numpy as np
import pytest

from evaluation.tasks import evaluate_task
from evaluation.toy import FIRST_HALVES, SECOND_HALVES, generate_triples, positive_win_rate, write_toy_task


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


def test_positive_win_rate_counts_strict_wins():
    queries = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    positives = np.array([[2.0, 2.0], [0.0, 1.0], [0.0, 1.0]])  # cosines 0.707, 0, 0
    negatives = np.array([[0.0, 3.0], [0.0, 1.0], [1.0, 1.0]])  # cosines 0, 0 (tie: a loss), 0.707
    assert positive_win_rate(queries, positives, negatives) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="shapes differ"):
        positive_win_rate(queries, positives[:2], negatives)


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


def test_cli_prints_the_structure_by_setting_table(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from evaluation.toy import main

    monkeypatch.setenv("ECHO_CACHE", str(tmp_path))
    assert main(["--model", str(tiny_model_dir), "--pooling", "mean,last", "--triples", "10", "--batch-size", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| task | metric | classical_sentence/mean | classical_sentence/last | echo_sentence/mean | echo_sentence/last |" in lines
    assert sum(line.startswith("| toy | S1 |") or line.startswith("| toy | S2 |") for line in lines) == 2
    assert main(["--model", str(tiny_model_dir), "--triples", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("n must be between 1 and 900 (distinct queries), got 0")
