"""FAISS roundings: typed parameters, recall against exact search, and use in a model's evaluation."""

from __future__ import annotations

import pytest
import torch

from diffrec.config import EvalConfig, ModelConfig, RunConfig
from diffrec.data import make_synthetic
from diffrec.errors import ConfigError
from diffrec.evaluation import evaluate
from diffrec.registry import registry
from diffrec.rounding_ann import recall_at_k
from diffrec.building import build_model


def clustered(n: int = 3000, d: int = 16, centres: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    return torch.cat([torch.zeros(1, d), c[torch.randint(0, centres, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)])


@pytest.mark.parametrize("spec, floor", [({"name": "faiss_hnsw"}, 0.9), ({"name": "faiss_ivf", "nlist": 32, "nprobe": 8}, 0.8)])
def test_approximate_search_recalls_most_of_the_exact_top_k(spec, floor):
    items = clustered()
    queries = items[torch.randint(1, len(items), (64,), generator=torch.Generator().manual_seed(1))] + 0.1
    rounding = registry("rounding").build(spec)
    assert recall_at_k(rounding, queries, items, 10) >= floor
    scores, ids = rounding.topk(queries, items, 10, torch.zeros(64, 1, dtype=torch.long))
    assert (ids > 0).all() and torch.isfinite(scores).all()
    exact = queries @ items.t()
    assert torch.allclose(scores, exact.gather(1, ids), atol=1e-4), "retrieved items carry their exact scores"


def test_parameters_are_checked():
    with pytest.raises(ConfigError, match="nprobe"):
        registry("rounding").build({"name": "faiss_ivf", "nlist": 4, "nprobe": 8})
    with pytest.raises(ConfigError, match="M >= 2"):
        registry("rounding").build({"name": "faiss_hnsw", "M": 1})


def test_a_model_evaluates_with_an_approximate_rounding():
    data = make_synthetic(num_users=100, num_items=200, seed=2)
    config = RunConfig(model=ModelConfig(hidden_size=16, num_blocks=1, num_heads=2, max_len=10, rounding={"name": "faiss_hnsw", "depth": 50}))
    torch.manual_seed(0)
    model = build_model(config, data.num_items)
    result = evaluate(model, data, "test", EvalConfig(batch_size=50), max_len=10, device=torch.device("cpu"))
    assert 0.0 <= result.metrics["HR@10"] <= 100.0
