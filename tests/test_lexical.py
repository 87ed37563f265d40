"""The lexical ranker that mines a mix's negatives, against hand-computed TF-IDF."""

import math
import zlib

import numpy as np
import pytest

from data import prepare
from data.formats import TrainingExample
from data.hard_negatives import normalized_text
from data.lexical import LexicalEncoder


def test_vectors_are_hand_computed_tf_idf():
    corpus = ["apt installs packages", "apt removes packages"]
    encoder = LexicalEncoder(corpus, dims=1 << 20)  # wide enough that these few terms never collide

    def idf(document_frequency):  # smoothed; a term no corpus text holds gets log(3) + 1
        return math.log(3 / (1 + document_frequency)) + 1

    # "APT apt installs packages", case folded: unigrams apt (tf 2), installs, packages; three bigrams.
    counts_and_df = {"apt": (2, 2), "installs": (1, 1), "packages": (1, 2),
                     "apt apt": (1, 0), "apt installs": (1, 1), "installs packages": (1, 1)}
    weights = {term: (1 + math.log(tf)) * idf(df) for term, (tf, df) in counts_and_df.items()}
    expected = np.zeros(1 << 20)
    for term, weight in weights.items():
        expected[zlib.crc32(term.encode()) % (1 << 20)] = weight
    expected /= np.linalg.norm(expected)
    vector = encoder(["APT apt installs packages"])[0]
    np.testing.assert_allclose(vector, expected, atol=1e-6)
    assert encoder(["", "apt"], "query", ["an instruction", None]).shape == (2, 1 << 20)
    assert not encoder([""]).any()  # no terms: the zero vector, not NaN


def test_a_shared_rare_word_outranks_shared_common_words():
    corpus = [f"the tool number {i} for the shell" for i in range(20)] + ["the tool rsync for the shell"]
    encoder = LexicalEncoder(corpus)
    scores = encoder(["copy files with rsync"]) @ encoder(corpus).T
    assert int(np.argmax(scores[0])) == 20


def _planted_examples(count: int) -> list[TrainingExample]:
    """Packages whose summaries and descriptions share a word of their own: the lexical rank is known."""
    return [TrainingExample(query=f"summary of tool{i} utility", positive=f"tool{i} does task{i} and more work",
                            negatives=[f"unrelated text number {i} here"], dataset="d", instruction="find it")
            for i in range(count)]


def test_mined_mix_rows_keep_query_and_positive_and_take_negatives_from_the_window():
    examples = _planted_examples(40)
    mined = prepare._with_mined_negatives(examples, pool_of=examples)
    assert [(e.query, e.positive, e.dataset, e.instruction) for e in mined] == \
        [(e.query, e.positive, e.dataset, e.instruction) for e in examples]
    pool = {text for e in examples for text in (e.positive, *e.negatives)}
    for example in mined:
        assert len(example.negatives) == prepare.MIX_MINING_RULE.negatives
        assert all(negative in pool for negative in example.negatives)
        assert normalized_text(example.positive) not in {normalized_text(n) for n in example.negatives}


@pytest.mark.parametrize("mix", sorted(prepare.DERIVED_MIXES))
def test_a_derived_mix_changes_only_datasets_of_its_base_mix(mix):
    # Its rows are its base mix's by construction (prepare.MIXES is derived); what it changes must be among them.
    derived = prepare.DERIVED_MIXES[mix]
    assert derived.mined and set(derived.mined) <= set(prepare.MIXES[derived.base])
