"""Embedding-evaluation metrics in plain numpy: similarity, ranking, correlation, classification, clustering.

Conventions shared by the ranking metrics: ``scores[q, d]`` is the similarity of query ``q``
to document ``d`` and ``relevance[q, d]`` its graded relevance (0 means not relevant).
Documents are ranked by descending score; equal scores keep corpus order, so every metric
is deterministic. nDCG uses linear gain (``rel / log2(rank + 1)``), as trec_eval and MTEB do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def main_metric_mean(scored: Iterable[tuple[Sequence[str], Mapping[str, float]]]) -> float:
    """The one-number summary of a set of scored tasks: the mean of every (task, main metric) value.

    ``scored`` holds one (main metric names, metrics) pair per task. A task with two main
    metrics (the toy task's S1 and S2) counts as two values, so a recipe that erases what echo
    buys on S2 shows in the mean.
    """
    values = [metrics[name] for names, metrics in scored for name in names]
    if not values:
        raise ValueError("main_metric_mean: no task scores to average")
    return float(np.mean(values))


def _ranked_relevance(scores: np.ndarray, relevance: np.ndarray, k: int | None) -> np.ndarray:
    """Relevance of each query's top-``k`` documents in ranked order, shape [n_queries, k]."""
    if scores.shape != relevance.shape or scores.ndim != 2:
        raise ValueError(
            f"scores {scores.shape} and relevance {relevance.shape} must be equal 2-D shapes"
        )
    if not (relevance > 0).any(axis=1).all():
        empty = np.flatnonzero(~(relevance > 0).any(axis=1))
        raise ValueError(f"queries {empty[:5].tolist()} have no relevant document")
    # A stable sort of the negated scores keeps corpus order among ties.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(relevance, order, axis=1)


def mrr_at_k(scores: np.ndarray, relevance: np.ndarray, k: int = 10) -> float:
    """Mean over queries of 1 / rank of the first relevant document within the top ``k`` (else 0)."""
    ranked = _ranked_relevance(scores, relevance, k) > 0
    first_hit = ranked.argmax(axis=1)
    reciprocal = np.where(ranked.any(axis=1), 1.0 / (first_hit + 1), 0.0)
    return float(reciprocal.mean())


def recall_at_k(scores: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of that query's relevant documents found in the top ``k``."""
    hits = (_ranked_relevance(scores, relevance, k) > 0).sum(axis=1)
    return float((hits / (relevance > 0).sum(axis=1)).mean())


def ndcg_at_k(scores: np.ndarray, relevance: np.ndarray, k: int = 10) -> float:
    """Mean over queries of DCG@k / ideal DCG@k with linear gain and log2(rank + 1) discount."""
    ranked = _ranked_relevance(scores, relevance, k).astype(np.float64)
    discount = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    dcg = (ranked * discount).sum(axis=1)
    ideal = -np.sort(-relevance.astype(np.float64), axis=1)[:, : ranked.shape[1]]
    idcg = (ideal * discount).sum(axis=1)
    return float((dcg / idcg).mean())


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values all get the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Each run of equal sorted values starts where the value changes.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], len(values)]
    ranks = np.empty(len(values))
    for start, end in zip(run_starts, run_ends):
        ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1 .. end
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks of ``x`` and ``y``."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two equal-length inputs of at least 2 items, got {len(x)} and {len(y)}")
    rank_x, rank_y = average_ranks(x), average_ranks(y)
    rank_x -= rank_x.mean()
    rank_y -= rank_y.mean()
    denominator = np.sqrt((rank_x**2).sum() * (rank_y**2).sum())
    if denominator == 0:
        raise ValueError("spearman is undefined when one input is constant")
    return float((rank_x * rank_y).sum() / denominator)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b``, in float64.

    The product of the two norms is clamped at 1e-12, so a zero row scores 0 instead of NaN.
    Raises ValueError when the shapes differ.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cosine_rows needs equal shapes, got {a.shape} and {b.shape}")
    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def positive_win_rate(query_vectors: np.ndarray, positive_vectors: np.ndarray, negative_vectors: np.ndarray) -> float:
    """Fraction of rows where cos(query, positive) > cos(query, negative) (ties count as losses).

    The score of the toy S1/S2 diagnostic. Raises ValueError when the three shapes differ.
    """
    if not query_vectors.shape == positive_vectors.shape == negative_vectors.shape:
        raise ValueError(
            f"vector shapes differ: {query_vectors.shape}, {positive_vectors.shape}, {negative_vectors.shape}"
        )
    wins = cosine_rows(query_vectors, positive_vectors) > cosine_rows(query_vectors, negative_vectors)
    return float(wins.mean())


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(
    train_vectors: np.ndarray, train_labels: list, test_vectors: np.ndarray, k: int = 5
) -> list:
    """Label each test vector by majority vote of its ``k`` most cosine-similar training vectors.

    A tied vote goes to the tied label whose best neighbour ranks highest (ties in similarity
    keep training order), so predictions never depend on dictionary or set ordering.
    """
    similarity = _unit_rows(test_vectors) @ _unit_rows(train_vectors).T
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    predictions = []
    for row in neighbours:
        ranked_labels = [train_labels[i] for i in row]
        votes = Counter(ranked_labels)
        top = max(votes.values())
        # Counter keeps first-insertion order, i.e. the order of the nearest occurrence.
        predictions.append(next(label for label in votes if votes[label] == top))
    return predictions


def logistic_regression_predict(
    train_vectors: np.ndarray,
    train_labels: list,
    test_vectors: np.ndarray,
    l2: float = 1e-3,
    steps: int = 300,
    learning_rate: float = 0.5,
) -> list:
    """Fit multinomial logistic regression by full-batch gradient descent, then label ``test_vectors``.

    Features are standardised with the training mean and deviation first; the fit starts from
    zero weights, so the result is deterministic.
    """
    classes = sorted(set(train_labels), key=str)
    class_index = {label: i for i, label in enumerate(classes)}
    targets = np.eye(len(classes))[[class_index[label] for label in train_labels]]
    train = np.asarray(train_vectors, dtype=np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-8
    train = (train - mean) / std
    test = (np.asarray(test_vectors, dtype=np.float64) - mean) / std
    weights = np.zeros((train.shape[1], len(classes)))
    bias = np.zeros(len(classes))
    for _ in range(steps):
        logits = train @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        # Gradient of the mean cross-entropy plus (l2 / 2) * ||weights||^2.
        error = (probabilities - targets) / len(train)
        weights -= learning_rate * (train.T @ error + l2 * weights)
        bias -= learning_rate * error.sum(axis=0)
    return [classes[i] for i in (test @ weights + bias).argmax(axis=1)]


def accuracy(predicted: list, expected: list) -> float:
    """Fraction of positions where ``predicted`` equals ``expected``."""
    if len(predicted) != len(expected) or not expected:
        raise ValueError(f"accuracy needs equal non-empty lists, got {len(predicted)} and {len(expected)}")
    return sum(p == e for p, e in zip(predicted, expected)) / len(expected)


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[n_points, n_centres] squared Euclidean distances, via |x|^2 - 2 x.c + |c|^2 (no n x k x d array)."""
    squared = (points**2).sum(axis=1)[:, None] - 2 * points @ centres.T + (centres**2).sum(axis=1)[None, :]
    return np.maximum(squared, 0.0)  # rounding can dip below zero


def kmeans(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """Cluster ``vectors`` into ``k`` groups with k-means++ seeding and Lloyd iterations.

    Returns the cluster index of each row. Seeded, so the same inputs give the same clusters.
    """
    points = np.asarray(vectors, dtype=np.float64)
    if not 1 <= k <= len(points):
        raise ValueError(f"kmeans needs 1 <= k <= number of points, got k={k} for {len(points)} points")
    rng = np.random.default_rng(seed)
    centres = np.empty((k, points.shape[1]))
    centres[0] = points[rng.integers(len(points))]
    nearest = _squared_distances(points, centres[:1])[:, 0]
    for index in range(1, k):
        # k-means++: draw the next centre with probability proportional to the squared
        # distance to the nearest centre chosen so far.
        if nearest.sum() <= 0:  # fewer distinct points than k: reuse a point
            centres[index] = points[rng.integers(len(points))]
        else:
            centres[index] = points[rng.choice(len(points), p=nearest / nearest.sum())]
        nearest = np.minimum(nearest, _squared_distances(points, centres[index : index + 1])[:, 0])
    assignment = np.full(len(points), -1)
    for _ in range(iterations):
        new_assignment = _squared_distances(points, centres).argmin(axis=1)
        if (new_assignment == assignment).all():
            break
        assignment = new_assignment
        for cluster in range(k):
            members = points[assignment == cluster]
            if len(members):  # an emptied cluster keeps its old centre
                centres[cluster] = members.mean(axis=0)
    return assignment


def _entropy(counts: np.ndarray) -> float:
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


def v_measure(true_labels: list, cluster_labels: list) -> float:
    """Harmonic mean of homogeneity and completeness (Rosenberg and Hirschberg, 2007).

    homogeneity = 1 - H(class | cluster) / H(class); completeness = 1 - H(cluster | class) / H(cluster),
    both read off the class-by-cluster contingency table; a zero entropy makes its score 1.
    """
    if len(true_labels) != len(cluster_labels) or not true_labels:
        raise ValueError(f"v_measure needs equal non-empty label lists, got {len(true_labels)} and {len(cluster_labels)}")
    class_ids = {label: i for i, label in enumerate(dict.fromkeys(true_labels))}
    cluster_ids = {label: i for i, label in enumerate(dict.fromkeys(cluster_labels))}
    contingency = np.zeros((len(class_ids), len(cluster_ids)))
    for true, cluster in zip(true_labels, cluster_labels):
        contingency[class_ids[true], cluster_ids[cluster]] += 1
    total = contingency.sum()
    class_entropy = _entropy(contingency.sum(axis=1))
    cluster_entropy = _entropy(contingency.sum(axis=0))
    # H(class | cluster) = sum over non-empty cells of -n_ck/N * log(n_ck / n_k), and symmetrically.
    rows, cols = np.nonzero(contingency)
    cell_counts = contingency[rows, cols]
    class_given_cluster = -(cell_counts / total * np.log(cell_counts / contingency.sum(axis=0)[cols])).sum()
    cluster_given_class = -(cell_counts / total * np.log(cell_counts / contingency.sum(axis=1)[rows])).sum()
    homogeneity = 1.0 if class_entropy == 0 else 1.0 - class_given_cluster / class_entropy
    completeness = 1.0 if cluster_entropy == 0 else 1.0 - cluster_given_class / cluster_entropy
    if homogeneity + completeness == 0:
        return 0.0
    return float(2 * homogeneity * completeness / (homogeneity + completeness))
