"""Metrics against hand-computed references on inputs small enough to check on paper."""

import numpy as np
import pytest

from evaluation.metrics import (
    accuracy,
    average_ranks,
    cosine_rows,
    kmeans,
    knn_predict,
    logistic_regression_predict,
    mrr_at_k,
    ndcg_at_k,
    positive_win_rate,
    recall_at_k,
    spearman,
    v_measure,
)

def test_cosine_rows_pairs_rows_and_scores_a_zero_row_zero():
    a = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    b = np.array([[4.0, 3.0], [-2.0, 0.0], [1.0, 1.0]])
    # (3*4 + 4*3) / (5 * 5) = 0.96; opposite directions -1; the zero row 0 (the clamp, not NaN).
    cosines = cosine_rows(a, b)
    assert cosines.dtype == np.float64
    np.testing.assert_allclose(cosines, [0.96, -1.0, 0.0], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="equal shapes"):
        cosine_rows(a, b[:2])


def test_positive_win_rate_counts_strict_wins():
    queries = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    positives = np.array([[2.0, 2.0], [0.0, 1.0], [0.0, 1.0]])  # cosines 0.707, 0, 0
    negatives = np.array([[0.0, 3.0], [0.0, 1.0], [1.0, 1.0]])  # cosines 0, 0 (tie: a loss), 0.707
    assert positive_win_rate(queries, positives, negatives) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="shapes differ"):
        positive_win_rate(queries, positives[:2], negatives)


# Query 0 ranks d0, d1, d2, d3 and its relevant documents are d1 (grade 2) and d3 (grade 1).
# Query 1 ranks d2, d1, d3, d0 and its only relevant document is d0.
SCORES = np.array([[0.9, 0.8, 0.7, 0.1], [0.2, 0.5, 0.9, 0.4]])
RELEVANCE = np.array([[0, 2, 0, 1], [1, 0, 0, 0]])


def test_mrr_takes_first_relevant_rank_and_cuts_at_k():
    # q0: first hit at rank 2 -> 1/2; q1: first hit at rank 4 -> 1/4; mean 0.375.
    assert mrr_at_k(SCORES, RELEVANCE, k=10) == pytest.approx(0.375)
    # With k=3 query 1's hit falls outside the cut: (1/2 + 0) / 2.
    assert mrr_at_k(SCORES, RELEVANCE, k=3) == pytest.approx(0.25)


def test_recall_counts_fraction_of_relevant_documents_in_top_k():
    # k=2: q0 finds d1 of {d1, d3} -> 1/2; q1 finds nothing -> 0; mean 0.25.
    assert recall_at_k(SCORES, RELEVANCE, k=2) == pytest.approx(0.25)
    assert recall_at_k(SCORES, RELEVANCE, k=4) == pytest.approx(1.0)


def test_ndcg_uses_linear_gain_and_log2_discount():
    # q0: DCG = 2/log2(3) + 1/log2(5) = 1.261860 + 0.430677 = 1.692536;
    #     ideal = 2/log2(2) + 1/log2(3) = 2.630930; ratio 0.643322.
    # q1: its one relevant document at rank 4: (1/log2(5)) / 1 = 0.430677.
    # mean (0.643322 + 0.430677) / 2 = 0.537000.
    assert ndcg_at_k(SCORES, RELEVANCE, k=10) == pytest.approx(0.537000, abs=1e-6)
    # At k=1 neither query has a relevant document first.
    assert ndcg_at_k(SCORES, RELEVANCE, k=1) == 0.0


def test_ranking_ties_keep_corpus_order():
    # Both documents score 0.5, so the relevant d1 ranks second: MRR 1/2.
    assert mrr_at_k(np.array([[0.5, 0.5]]), np.array([[0, 1]])) == 0.5


def test_ranking_metrics_reject_query_without_relevant_document():
    with pytest.raises(ValueError, match=r"queries \[1\]"):
        mrr_at_k(SCORES, np.array([[0, 1, 0, 0], [0, 0, 0, 0]]))


def test_average_ranks_share_ties():
    # Sorted: 1 (rank 1), 2, 2 (ranks 2 and 3 -> 2.5 each), 3 (rank 4).
    np.testing.assert_allclose(average_ranks(np.array([3, 2, 1, 2])), [4, 2.5, 1, 2.5])


def test_spearman_with_ties():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; centred: [-1.5, 0, 0, 1.5], [-1.5, .5, -.5, 1.5]
    # covariance sum 4.5; squared sums 4.5 and 5 -> 4.5 / sqrt(22.5) = 0.948683.
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 3, 2, 4])) == pytest.approx(0.948683, abs=1e-6)
    assert spearman(np.array([1, 2, 3]), np.array([30, 20, 10])) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="constant"):
        spearman(np.array([1, 1, 1]), np.array([1, 2, 3]))


def test_knn_majority_vote_and_nearest_tie_break():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = ["a", "b", "b"]
    test = np.array([[1.0, 0.1]])
    # cosines: [1,0] 0.995, [1,1] 0.774, [0,1] 0.0995.
    assert knn_predict(train, labels, test, k=1) == ["a"]
    # k=2: one vote each for a and b; a's neighbour is nearer, so a wins.
    assert knn_predict(train, labels, test, k=2) == ["a"]
    # k=3: b has two votes.
    assert knn_predict(train, labels, test, k=3) == ["b"]


def test_logistic_regression_separates_a_line():
    train = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    # Symmetric data: the boundary sits at 0, so -0.5 is "neg" and 0.5, 3 are "pos".
    predicted = logistic_regression_predict(train, ["neg", "neg", "pos", "pos"], np.array([[-0.5], [0.5], [3.0]]))
    assert predicted == ["neg", "pos", "pos"]
    assert accuracy(predicted, ["neg", "neg", "pos"]) == pytest.approx(2 / 3)


def test_logistic_regression_three_classes():
    centres = np.array([[0.0, 5.0], [5.0, 0.0], [-5.0, -5.0]])
    rng = np.random.default_rng(0)
    train = np.repeat(centres, 10, axis=0) + rng.normal(scale=0.5, size=(30, 2))
    labels = [0] * 10 + [1] * 10 + [2] * 10
    assert logistic_regression_predict(train, labels, centres) == [0, 1, 2]


def test_kmeans_finds_separated_groups_for_any_seed():
    points = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0], [20.0, 0.0]])
    for seed in range(5):
        clusters = kmeans(points, k=3, seed=seed)
        assert clusters[0] == clusters[1] and clusters[2] == clusters[3]
        assert len({clusters[0], clusters[2], clusters[4]}) == 3
    np.testing.assert_array_equal(kmeans(points, 3, seed=1), kmeans(points, 3, seed=1))
    with pytest.raises(ValueError, match="k=6"):
        kmeans(points, k=6)


def test_v_measure_hand_computed():
    assert v_measure(["a", "a", "b", "b"], [7, 7, 3, 3]) == pytest.approx(1.0)
    # One cluster: homogeneity 0, completeness 1 -> 0.
    assert v_measure(["a", "a", "b", "b"], [0, 0, 0, 0]) == 0.0
    # Contingency a: (2, 1), b: (0, 3).  H(C) = ln 2 = 0.693147.
    # H(C|K) = -(1/6 ln 1/4 + 3/6 ln 3/4) = 0.374890 -> h = 1 - 0.374890/0.693147 = 0.459148.
    # H(K) = -(1/3 ln 1/3 + 2/3 ln 2/3) = 0.636514; H(K|C) = -(2/6 ln 2/3 + 1/6 ln 1/3) = 0.318257 -> c = 0.5.
    # v = 2 h c / (h + c) = 0.459148 / 0.959148 = 0.478704.
    assert v_measure(list("aaabbb"), [0, 0, 1, 1, 1, 1]) == pytest.approx(0.478704, abs=1e-6)
