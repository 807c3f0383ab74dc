"""Ranking streamed over item tiles gives the dense ranking's ranks, metrics and top-K lists."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffrec.config import EvalConfig, ModelConfig, RunConfig
from diffrec.data import make_synthetic
from diffrec.evaluation import evaluate
from diffrec.metrics import target_ranks
from diffrec.streaming import streamed_ranks
from diffrec.building import build_model


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    data=st.data(),
    ties=st.booleans(),
    official=st.booleans(),
    tile=st.integers(1, 40),
)
def test_streamed_ranks_equal_the_dense_ranks(data, ties, official, tile):
    B, N, d = data.draw(st.integers(1, 6)), data.draw(st.integers(2, 40)), data.draw(st.integers(1, 5))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 10_000)))
    q, T = (torch.randint(-2, 3, s, generator=g).float() if ties else torch.randn(s, generator=g) for s in ((B, d), (N + 1, d)))
    targets = torch.randint(1, N + 1, (B,), generator=g)
    history = data.draw(st.one_of(st.none(), st.lists(st.lists(st.integers(1, N), max_size=6), min_size=B, max_size=B)))
    scores = q @ T.t()
    if not official:
        scores[:, 0] = float("-inf")
    for row, items in enumerate(history or []):
        scores[row, torch.as_tensor(items, dtype=torch.long)] = float("-inf")
    got = streamed_ranks(q, T, targets, skip_padding=not official, exclude=history, tile=tile)
    assert torch.equal(got, target_ranks(scores, targets))


@pytest.mark.parametrize(
    "model_settings",
    [
        {"model": "diffurec"},
        {"model": "diffurec", "rounding": "l2"},
        {"model": "diffurec", "rounding": "cosine", "reverse_sampler": "one_step"},
        {"model": "sasrec"},
        {"model": "dreamrec", "reverse_sampler": {"name": "ddim", "steps": 3, "guidance": 1.0}},
    ],
)
@pytest.mark.parametrize("protocol, exclude", [("correct", False), ("correct", True), ("official", False)])
def test_streamed_evaluation_gives_the_dense_metrics_and_lists(model_settings, protocol, exclude):
    data = make_synthetic(num_users=200, num_items=60, seed=5)
    torch.manual_seed(0)
    model = build_model(RunConfig(model=ModelConfig(hidden_size=16, num_blocks=1, num_heads=2, max_len=10, **model_settings)), data.num_items)
    base = EvalConfig(protocol=protocol, exclude_history=exclude, batch_size=64, tile=17)
    dense = evaluate(model, data, "test", dataclasses.replace(base, stream="never"), max_len=10, device=torch.device("cpu"), save_topk=5)
    streamed = evaluate(model, data, "test", dataclasses.replace(base, stream="always"), max_len=10, device=torch.device("cpu"), save_topk=5)
    assert streamed.metrics == dense.metrics
    assert (streamed.topk == dense.topk).all()


def test_auto_streams_only_large_catalogues():
    from diffrec.evaluation import STREAM_ABOVE, streams

    model = build_model(RunConfig(model=ModelConfig(model="sasrec", hidden_size=16, num_blocks=1, num_heads=2, max_len=10)), 30)
    small = make_synthetic(num_users=50, num_items=30, seed=1)
    assert not streams(model, small, EvalConfig()) and streams(model, small, EvalConfig(stream="always"))
    big = dataclasses.replace(small, num_items=STREAM_ABOVE + 1)
    assert streams(model, big, EvalConfig()) and not streams(model, big, EvalConfig(stream="never"))
