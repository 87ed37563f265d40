"""InfoNCELoss against a reference written with explicit loops over Python floats, and text_key stability."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train.loss
from train.loss import InfoNCELoss, text_key


def _cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def _row_losses(
    anchors: list[list[float]],
    candidates: list[list[float]],
    anchor_keys: list[int],
    candidate_keys: list[int],
    label_of: list[int],
    temperature: float,
) -> list[float]:
    """-log softmax of each anchor's label among candidates, skipping candidates that repeat the label's key."""
    losses = []
    for anchor, key, label in zip(anchors, anchor_keys, label_of):
        denominator = 0.0
        for index, candidate in enumerate(candidates):
            if index != label and candidate_keys[index] == key:
                continue
            denominator += math.exp(_cosine(anchor, candidate) / temperature)
        losses.append(-math.log(math.exp(_cosine(anchor, candidates[label]) / temperature) / denominator))
    return losses


def reference_terms(queries, documents, query_keys, document_keys, temperature):
    """Per-query forward terms (query -> all documents) and reverse terms (positive -> all queries)."""
    group = len(documents) // len(queries)
    positive_rows = [i * group for i in range(len(queries))]
    positive_keys = [document_keys[row] for row in positive_rows]
    forward = _row_losses(queries, documents, positive_keys, document_keys, positive_rows, temperature)
    positives = [documents[row] for row in positive_rows]
    reverse = _row_losses(positives, queries, query_keys, query_keys, list(range(len(queries))), temperature)
    return forward, reverse


def reference_loss(queries, documents, query_keys, document_keys, temperature, symmetric, rows=None):
    forward, reverse = reference_terms(queries, documents, query_keys, document_keys, temperature)
    rows = range(len(queries)) if rows is None else rows
    forward_mean = sum(forward[i] for i in rows) / len(rows)
    reverse_mean = sum(reverse[i] for i in rows) / len(rows)
    return (forward_mean + reverse_mean) / 2 if symmetric else forward_mean


def reference_matryoshka_loss(queries, documents, query_keys, document_keys, temperature, symmetric, widths, rows=None):
    """The loop-written loss at each prefix width (the cosine re-normalises each prefix), averaged over the widths."""
    total = 0.0
    for width in widths:
        truncated_queries = [[value for value in row[:width]] for row in queries]
        truncated_documents = [[value for value in row[:width]] for row in documents]
        total += reference_loss(truncated_queries, truncated_documents, query_keys, document_keys, temperature, symmetric,
                                rows)
    return total / len(widths)


def _batch(num_queries: int, hard_negatives: int, dim: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(num_queries, dim, generator=generator, dtype=torch.float64)
    documents = torch.randn(num_queries * (1 + hard_negatives), dim, generator=generator, dtype=torch.float64)
    query_keys = torch.tensor([text_key(f"query {i}") for i in range(num_queries)])
    document_keys = torch.tensor([text_key(f"document {i}") for i in range(documents.shape[0])])
    return queries, documents, query_keys, document_keys


def _loss(queries, documents, query_keys, document_keys, temperature=0.02, symmetric=False, dims=None) -> float:
    return InfoNCELoss(temperature, symmetric, dims)(queries, documents, query_keys, document_keys).item()


def _reference(queries, documents, query_keys, document_keys, temperature=0.02, symmetric=False, rows=None,
               widths=None) -> float:
    return reference_matryoshka_loss(queries.tolist(), documents.tolist(), query_keys.tolist(), document_keys.tolist(),
                                     temperature, symmetric, widths or [queries.shape[1]], rows)


def test_single_query_two_orthogonal_documents_by_hand():
    # cos(q, p+) = 1, cos(q, p-) = 0, t = 0.5: loss = -log(e^2 / (e^2 + e^0)) = log(1 + e^-2).
    queries = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    documents = torch.tensor([[2.0, 0.0], [0.0, 7.0]], dtype=torch.float64)
    keys = torch.tensor([text_key("q")]), torch.tensor([text_key("p+"), text_key("p-")])
    assert _loss(queries, documents, *keys, temperature=0.5) == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-12)


def test_in_batch_and_hard_negatives_match_reference():
    batch = _batch(num_queries=3, hard_negatives=2)
    assert _loss(*batch) == pytest.approx(_reference(*batch), abs=1e-9)


def test_no_hard_negatives_match_reference():
    batch = _batch(num_queries=4, hard_negatives=0, seed=1)
    assert _loss(*batch) == pytest.approx(_reference(*batch), abs=1e-9)


@pytest.mark.parametrize("temperature", [0.02, 0.1, 1.0])
def test_temperature_matches_reference(temperature):
    batch = _batch(num_queries=3, hard_negatives=1, seed=2)
    expected = _reference(*batch, temperature=temperature)
    assert _loss(*batch, temperature=temperature) == pytest.approx(expected, abs=1e-9)


def test_duplicate_positive_text_is_masked():
    queries, documents, query_keys, document_keys = _batch(num_queries=3, hard_negatives=1, seed=3)
    # Query 0's positive (row 0) reappears as query 2's hard negative (row 5) and query 1's positive (row 2).
    document_keys = document_keys.clone()
    document_keys[5] = document_keys[0]
    document_keys[2] = document_keys[0]
    masked = _loss(queries, documents, query_keys, document_keys)
    assert masked == pytest.approx(_reference(queries, documents, query_keys, document_keys), abs=1e-9)
    unique_keys = torch.arange(documents.shape[0])
    assert abs(masked - _loss(queries, documents, query_keys, unique_keys)) > 1e-3


def test_symmetric_term_matches_reference_with_duplicate_queries():
    queries, documents, query_keys, document_keys = _batch(num_queries=4, hard_negatives=1, seed=4)
    query_keys = query_keys.clone()
    query_keys[3] = query_keys[1]
    loss = _loss(queries, documents, query_keys, document_keys, temperature=0.05, symmetric=True)
    assert loss == pytest.approx(
        _reference(queries, documents, query_keys, document_keys, temperature=0.05, symmetric=True), abs=1e-9
    )
    assert abs(loss - _loss(queries, documents, query_keys, document_keys, temperature=0.05)) > 1e-3


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dims, widths", [([2, 3], [2, 3, 5]), ([3, 2, 3, 5], [2, 3, 5]), ([1], [1, 5])])
def test_matryoshka_loss_is_the_mean_over_prefix_widths_of_the_reference(symmetric, dims, widths):
    """Listed dims in any order, repeated or not, plus the full width (5) whether listed or not."""
    queries, documents, query_keys, document_keys = _batch(num_queries=4, hard_negatives=2, seed=6)
    document_keys = document_keys.clone()
    document_keys[4] = document_keys[0]  # a duplicate text: masked at every width
    loss = _loss(queries, documents, query_keys, document_keys, temperature=0.05, symmetric=symmetric, dims=dims)
    expected = _reference(queries, documents, query_keys, document_keys, 0.05, symmetric, widths=widths)
    assert loss == pytest.approx(expected, abs=1e-9)
    # Each prefix width is a term of its own: it differs from the full-width loss.
    assert abs(loss - _loss(queries, documents, query_keys, document_keys, 0.05, symmetric)) > 1e-3


def test_matryoshka_gradient_equals_the_sum_of_each_widths_gradient_over_their_number():
    queries, documents, query_keys, document_keys = _batch(num_queries=3, hard_negatives=1, seed=7)

    def gradient(dims):
        leaf = queries.clone().requires_grad_()
        InfoNCELoss(0.05, matryoshka_dims=dims)(leaf, documents, query_keys, document_keys).backward()
        return leaf.grad

    def width_only(width):  # the loss at one width alone: the embedding's prefix as the whole embedding
        leaf = queries.clone().requires_grad_()
        InfoNCELoss(0.05)(leaf[:, :width], documents[:, :width], query_keys, document_keys).backward()
        return leaf.grad

    torch.testing.assert_close(gradient([2, 4]), (width_only(2) + width_only(4) + width_only(5)) / 3)


def test_matryoshka_dims_beyond_the_width_raise():
    queries, documents, query_keys, document_keys = _batch(num_queries=2, hard_negatives=1)
    with pytest.raises(ValueError, match=r"matryoshka dims \[2, 8\] must lie in 1..5"):
        InfoNCELoss(matryoshka_dims=[8, 2])(queries, documents, query_keys, document_keys)
    with pytest.raises(ValueError, match="must lie in 1..5"):
        InfoNCELoss(matryoshka_dims=[0])(queries, documents, query_keys, document_keys)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dims", [None, [2, 4]])
def test_rank_one_of_two_offsets_labels_into_the_gathered_batch(monkeypatch, symmetric, dims):
    # Simulated collectives: this process plays rank 1 of 2; the gather prepends rank 0's rows.
    queries, documents, query_keys, document_keys = _batch(num_queries=4, hard_negatives=2, seed=5)
    local_queries, local_documents = queries[2:], documents[6:]

    # The loss normalizes before gathering, so rank 0's gathered embeddings arrive normalized.
    def gather_with_grad(t):
        source = queries[:2] if t.shape[0] == 2 else documents[:6]
        return torch.cat([torch.nn.functional.normalize(source, dim=-1), t])

    def gather_keys(t):
        return torch.cat([query_keys[:2] if t.shape[0] == 2 else document_keys[:6], t])

    monkeypatch.setattr(train.loss, "_rank", lambda: 1)
    monkeypatch.setattr(train.loss, "gather_with_grad", gather_with_grad)
    monkeypatch.setattr(train.loss, "_gather_without_grad", gather_keys)
    loss = _loss(local_queries, local_documents, query_keys[2:], document_keys[6:], symmetric=symmetric, dims=dims)
    widths = [2, 4, 5] if dims else None
    expected = _reference(queries, documents, query_keys, document_keys, symmetric=symmetric, rows=[2, 3], widths=widths)
    assert loss == pytest.approx(expected, abs=1e-9)


def test_inconsistent_shapes_raise():
    queries, documents, query_keys, document_keys = _batch(num_queries=3, hard_negatives=1)
    with pytest.raises(ValueError, match="documents"):
        InfoNCELoss()(queries, documents[:-1], query_keys, document_keys[:-1])
    with pytest.raises(ValueError, match="document_keys"):
        InfoNCELoss()(queries, documents, query_keys, document_keys[:-1])


def test_text_key_is_stable_across_processes_and_fits_int64():
    texts = ["hello", "hello ", "Hello", "échos", ""]
    keys = [text_key(t) for t in texts]
    assert len(set(keys)) == len(texts)
    assert all(0 <= k < 2**63 for k in keys)
    torch.tensor(keys, dtype=torch.int64)
    # Python's own hash() differs between these processes; text_key must not.
    program = f"from train.loss import text_key; print([text_key(t) for t in {texts!r}])"
    environment = dict(os.environ, PYTHONHASHSEED="12345")
    repo_root = Path(__file__).resolve().parents[1]
    output = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, env=environment, cwd=repo_root
    ).stdout
    assert output.strip() == str(keys)
