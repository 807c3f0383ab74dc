import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffrec.metrics import metric_keys, metrics_from_ranks, target_ranks


def test_hand_computed_ranks_and_metrics():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.2, 0.1, 0.8, 0.8], [1.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([1, 3, 3])
    ranks = target_ranks(scores, targets)
    # row 0: best; row 1: tied with id 2 which wins (lower id); row 2: ties with ids 1, 2 and below id 0
    assert ranks.tolist() == [0, 1, 3]
    m = metrics_from_ranks(ranks, [1, 2, 5])
    assert m["HR@1"].tolist() == [1.0, 0.0, 0.0]
    assert m["HR@2"].tolist() == [1.0, 1.0, 0.0]
    assert m["NDCG@2"][1].item() == pytest.approx(1 / math.log2(3))
    assert m["NDCG@5"][2].item() == pytest.approx(1 / math.log2(5))
    assert m["MRR@5"].tolist() == pytest.approx([1.0, 0.5, 0.25])


def test_metric_keys_order():
    assert metric_keys([5, 10]) == ["HR@5", "NDCG@5", "MRR@5", "HR@10", "NDCG@10", "MRR@10"]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(-3, 3), min_size=2, max_size=12), min_size=1, max_size=6),
    data=st.data(),
)
def test_rank_matches_sorting(rows, data):
    width = min(len(r) for r in rows)
    scores = torch.tensor([r[:width] for r in rows], dtype=torch.float32)
    targets = torch.tensor([data.draw(st.integers(0, width - 1)) for _ in rows])
    ranks = target_ranks(scores, targets)
    for b in range(len(rows)):
        order = sorted(range(width), key=lambda i: (-scores[b, i].item(), i))  # score desc, lower id first
        assert ranks[b].item() == order.index(targets[b].item())
    m = metrics_from_ranks(ranks, [1, 3, 5])
    for k_small, k_big in [(1, 3), (3, 5)]:
        assert (m[f"HR@{k_small}"] <= m[f"HR@{k_big}"]).all()
        assert (m[f"NDCG@{k_small}"] <= m[f"NDCG@{k_big}"] + 1e-12).all()
    for k in (1, 3, 5):
        assert (m[f"NDCG@{k}"] <= m[f"HR@{k}"]).all()
        assert (m[f"MRR@{k}"] <= m[f"NDCG@{k}"] + 1e-12).all()
        assert ((m[f"HR@{k}"] == 0) | (m[f"HR@{k}"] == 1)).all()
