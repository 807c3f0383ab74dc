"""Tests for the seeded synthetic dataset and its oracle accuracy helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffrec.data.dataset import SequenceData
from diffrec.data.synthetic import (
    make_synthetic,
    next_item_entropy,
    oracle_hr_at_k,
    popularity_hr_at_k,
    transition_matrix,
)
from diffrec.errors import DataError


@pytest.fixture(scope="module")
def default_data() -> SequenceData:
    return make_synthetic()


def test_defaults_shape_and_ranges(default_data):
    data = default_data
    assert data.name == "synthetic" and data.num_users == 2000 and data.num_items == 500
    lengths = [len(s) for s in data.sequences]
    assert min(lengths) == 5 and max(lengths) == 20
    assert all(1 <= i <= 500 for s in data.sequences for i in s)
    assert (data.item_counts()[1:] > 0).mean() > 0.95, "nearly every item is used"
    assert data.num_actions < 40_000, "small enough to train on two CPU cores in well under a minute"


def test_same_seed_same_data_other_seed_other_data(default_data):
    again = make_synthetic(seed=0)
    assert again.sequences == default_data.sequences
    assert again.meta["generator"] == default_data.meta["generator"]
    other = make_synthetic(seed=1)
    assert other.sequences != default_data.sequences
    assert other.meta["generator"]["successors"] != default_data.meta["generator"]["successors"]


def test_arguments_are_honoured():
    data = make_synthetic(num_users=50, num_items=40, seed=3, min_length=7, max_length=9, cluster_size=8, branching=2)
    assert data.num_users == 50 and data.num_items == 40
    assert {len(s) for s in data.sequences} <= {7, 8, 9}
    assert np.asarray(data.meta["generator"]["successors"]).shape == (40, 2)


def test_transitions_follow_the_planted_graph(default_data):
    """The fraction of steps along a successor edge matches 1 - noise + noise * branching / N."""
    successors = np.asarray(default_data.meta["generator"]["successors"])
    steps = [(a, b) for s in default_data.sequences for a, b in zip(s, s[1:])]
    along = np.mean([b in successors[a - 1] for a, b in steps])
    expected = 0.9 + 0.1 * 3 / 500
    assert abs(along - expected) < 0.01
    for a in range(1, 501):
        assert all((a - 1) // 10 == (b - 1) // 10 and b != a for b in successors[a - 1]), "successors stay in the cluster"


def test_transition_matrix_rows_are_distributions(default_data):
    probs = transition_matrix(default_data)
    assert probs.shape == (501, 501)
    assert np.allclose(probs[1:].sum(axis=1), 1.0)
    assert probs[0].sum() == 0 and probs[:, 0].sum() == 0


def test_oracle_is_far_above_popularity_and_random(default_data):
    oracle = oracle_hr_at_k(default_data, 10)
    assert oracle == pytest.approx(0.9 + 0.1 * 10 / 500)
    assert default_data.meta["oracle_hr@10"] == pytest.approx(oracle)
    assert default_data.meta["random_hr@10"] == pytest.approx(10 / 500)
    assert popularity_hr_at_k(default_data, 10) < 0.15
    # the realised test targets agree with the expected oracle hit rate (binomial sd ~ 0.007)
    probs = transition_matrix(default_data)
    hits = [s[-1] in np.argsort(-probs[s[-2]], kind="stable")[:10] for s in default_data.sequences]
    assert abs(np.mean(hits) - oracle) < 0.03


def test_a_first_order_model_learns_the_structure(default_data):
    """Next-item counts from the training parts already rank test targets far above popularity."""
    n = default_data.num_items
    counts = np.zeros((n + 1, n + 1))
    for u in range(default_data.num_users):
        history = default_data.test_input(u)
        np.add.at(counts, (history[:-1], history[1:]), 1)
    hits = [s[-1] in np.argsort(-counts[s[-2]], kind="stable")[:10] for s in default_data.sequences]
    learned = float(np.mean(hits))
    popularity = popularity_hr_at_k(default_data, 10)
    assert learned > 0.8 and learned > 5 * popularity


def test_oracle_extremes():
    pure_noise = make_synthetic(num_users=30, num_items=50, noise=1.0)
    assert oracle_hr_at_k(pure_noise, 10) == pytest.approx(10 / 50)
    assert next_item_entropy(pure_noise) == pytest.approx(math.log2(50))
    deterministic = make_synthetic(num_users=30, num_items=50, noise=0.0, branching=1)
    assert oracle_hr_at_k(deterministic, 1) == pytest.approx(1.0)
    assert next_item_entropy(deterministic) == pytest.approx(0.0)
    assert all(
        b == deterministic.meta["generator"]["successors"][a - 1][0] for s in deterministic.sequences for a, b in zip(s, s[1:])
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_users": 0}, "num_users"),
        ({"min_length": 2}, "min_length"),
        ({"min_length": 9, "max_length": 8}, "min_length"),
        ({"branching": 10, "cluster_size": 10}, "branching"),
        ({"num_items": 5}, "cluster_size <= num_items"),
        ({"noise": 1.5}, "noise"),
        ({"concentration": 0}, "concentration"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(DataError, match=message):
        make_synthetic(**kwargs)


def test_oracle_needs_a_synthetic_dataset():
    data = SequenceData(sequences=[[1, 2, 3]], num_items=3)
    with pytest.raises(DataError, match="not a synthetic dataset"):
        oracle_hr_at_k(data, 10)


def test_uneven_last_cluster_is_merged():
    data = make_synthetic(num_users=20, num_items=23, cluster_size=10, branching=3)
    successors = np.asarray(data.meta["generator"]["successors"])
    assert successors[20:].min() >= 11, "items 21-23 share the cluster 11-23"
    assert (successors[:10] <= 10).all()
