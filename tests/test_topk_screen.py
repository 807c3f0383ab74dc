"""The bf16 screen of the float32 CPU top-K: its error bound holds, and its result is the float32 top-K."""

from __future__ import annotations

import pytest
import torch
from diffrec.kernels import inner_product_topk
from diffrec.kernels import topk as topk_module
from diffrec.kernels import topk_screen
from diffrec.kernels.topk import chunked_topk, normalize_exclude
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def screened(queries, items, k, exclude=None, **kwargs):
    """The screen alone, with the chunked float32 path for the rows it hands back (counted)."""
    exclusion = normalize_exclude(exclude, queries.shape[0], items.shape[0], queries.device)
    handed_back = []

    def exact(rows):
        handed_back.append(rows)
        return chunked_topk(queries[rows], items, k, exclusion.rows(rows))

    values, ids = topk_screen.screened_topk(queries, items, k, exclusion, exact, **kwargs)
    return values, ids, sum(len(r) for r in handed_back)


def exact_top(queries, items, k, exclude=None):
    return chunked_topk(queries, items, k, normalize_exclude(exclude, queries.shape[0], items.shape[0], queries.device))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dim=st.sampled_from([1, 3, 16, 128, 1000]),
    log_scale=st.floats(-62, 20),  # down to products in float32's subnormal range
    spread=st.floats(0, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_the_bound_holds_between_the_bf16_product_and_the_float32_rescoring(dim, log_scale, spread, seed):
    gen = torch.Generator().manual_seed(seed)
    size = lambda n: torch.exp(spread * torch.randn(n, dim, generator=gen)) * 2.0**log_scale  # noqa: E731  # entries over many binades
    queries = size(8) * torch.randn(8, dim, generator=gen)
    items = size(64) * torch.randn(64, dim, generator=gen)
    screen = (queries.to(torch.bfloat16) @ items.to(torch.bfloat16).T).double()
    rescored = torch.bmm(items.expand(8, -1, -1), queries[:, :, None]).squeeze(2).double()  # the rescoring's own computation
    exact = queries.double() @ items.double().T
    bound = topk_screen.bound_factor(dim) * torch.linalg.vector_norm(queries.double(), dim=1)[:, None] * torch.linalg.vector_norm(items.double(), dim=1)[None, :]
    bound = bound + topk_screen.absolute_slack(dim)
    assert bool(((screen - rescored).abs() <= bound).all())
    assert bool(((screen - exact).abs() <= bound).all())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 40),
    n_items=st.integers(1, 400),
    dim=st.integers(1, 24),
    k_frac=st.floats(0, 1),
    tile=st.sampled_from([1, 5, 64, 1 << 16]),
    excluded=st.integers(0, 6),
    per_query=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_on_exact_integer_scores_the_screen_equals_the_float32_path_ties_included(batch, n_items, dim, k_frac, tile, excluded, per_query, seed):
    """Small integers: every score is exact in bf16 products and float32, and ties abound."""
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randint(-2, 3, (batch, dim), generator=gen).float()
    items = torch.randint(-2, 3, (n_items, dim), generator=gen).float()
    exclude = None
    allowed = n_items
    if excluded:
        if per_query:
            exclude = torch.randint(-1, n_items, (batch, excluded), generator=gen)
        else:
            exclude = torch.randint(0, n_items, (excluded,), generator=gen)
        allowed = n_items - excluded
    if allowed < 1:
        return
    k = max(1, int(k_frac * allowed))
    values, ids, _ = screened(queries, items, k, exclude, tile=tile)
    want_v, want_i = exact_top(queries, items, k, exclude)
    assert torch.equal(ids, want_i) and torch.equal(values, want_v)


@pytest.mark.parametrize("k", [1, 10, 100])
@pytest.mark.parametrize("kind", ["gaussian", "clustered", "norms"])
def test_on_float_data_the_screen_returns_the_float32_top_k(kind, k):
    gen = torch.Generator().manual_seed(k)
    if kind == "clustered":  # many near-equal scores: wide candidate bands
        centres = 2 * torch.randn(20, 64, generator=gen)
        items = centres[torch.randint(0, 20, (5000,), generator=gen)] + 0.2 * torch.randn(5000, 64, generator=gen)
        queries = centres[torch.randint(0, 20, (33,), generator=gen)] + 0.5 * torch.randn(33, 64, generator=gen)
    else:
        items, queries = torch.randn(5000, 64, generator=gen), torch.randn(33, 64, generator=gen)
        if kind == "norms":  # item norms over three decades: a tile's largest bound is loose for most items
            items = items * torch.exp(2.3 * torch.rand(5000, 1, generator=gen) * 3 - 3)
    values, ids, handed_back = screened(queries, items, k, 0, tile=1024)
    assert handed_back == 0
    want_v, want_i = exact_top(queries, items, k, 0)
    torch.testing.assert_close(values, want_v, rtol=1e-5, atol=1e-5)
    exact = queries.double() @ items.double().T
    exact[:, 0] = float("-inf")
    kth = exact.gather(1, want_i)[:, -1:]
    got = exact.gather(1, ids)
    # the same items, except where two scores are within float32 rounding of each other at the k-th place
    assert bool((got >= kth - 1e-4 * exact.abs().max()).all())
    assert bool((values[:, :-1] >= values[:, 1:]).all()) and not bool((ids == 0).any())


@pytest.mark.parametrize("seed", range(5))
def test_near_duplicates_that_bf16_misorders_are_ranked_as_float32_ranks_them(seed):
    """Scores spread over a few bf16 steps, so that bf16 misorders them: the bound must keep them."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 32, generator=gen)
    near = base * (1 + 1e-2 * torch.randn(300, 1, generator=gen)) + 1e-2 * torch.randn(300, 32, generator=gen)
    items = torch.cat([near, 0.1 * torch.randn(3000, 32, generator=gen)])
    items = items[torch.randperm(items.shape[0], generator=gen)]
    queries = base.repeat(20, 1) + 1e-2 * torch.randn(20, 32, generator=gen)
    values, ids, handed_back = screened(queries, items, 10)  # one tile: its k-th bf16 score is the catalogue's
    want_v, want_i = exact_top(queries, items, 10)
    assert handed_back == 0
    assert torch.equal(ids, want_i)


def test_queries_with_too_many_candidates_go_to_the_float32_path():
    queries, items = torch.randint(-2, 3, (9, 8)).float(), torch.randint(-2, 3, (300, 8)).float()
    values, ids, handed_back = screened(queries, items, 5, max_candidates=4)  # every query has at least k
    assert handed_back == 9
    want_v, want_i = exact_top(queries, items, 5)
    assert torch.equal(ids, want_i) and torch.equal(values, want_v)


@pytest.mark.parametrize("where, value", [("items", 3.4e38), ("queries", 3.4e38), ("items", 1e20)])
def test_inputs_beyond_bf16_range_go_to_the_float32_path(where, value):
    """3.4e38 rounds to inf in bf16; 1e20 x 1e20 would overflow a partial sum."""
    queries, items = torch.randn(4, 8), torch.randn(50, 8)
    (items if where == "items" else queries)[3, 0] = value
    if value == 1e20:
        queries[0, 0] = 1e20
    _, ids, handed_back = screened(queries, items, 3)
    assert handed_back == 4 and torch.equal(ids, exact_top(queries, items, 3)[1])


def test_the_cached_item_copy_follows_in_place_changes_and_new_tables():
    queries, items = torch.randn(20, 16), torch.randn(500, 16)
    first = screened(queries, items, 5)[1]
    items.mul_(-1)  # the optimizer updates the table in place
    assert torch.equal(screened(queries, items, 5)[1], exact_top(queries, items, 5)[1])
    assert not torch.equal(screened(queries, items, 5)[1], first)
    other = torch.randn(500, 16)
    assert torch.equal(screened(queries, other, 5)[1], exact_top(queries, other, 5)[1])
    del other
    assert topk_screen._cache == {}, "the copy of a table that is gone is dropped"


def test_the_public_op_uses_the_screen_where_the_cpu_has_amx(monkeypatch):
    queries, items = torch.randint(-2, 3, (32, 8)).float(), torch.randint(-2, 3, (700, 8)).float()
    calls = []
    real = topk_screen.screened_topk
    monkeypatch.setattr(topk_screen, "screened_topk", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    want = exact_top(queries, items, 7, 0)
    for hardware, n_queries, used in [(True, 32, True), (False, 32, False), (True, 8, False)]:
        monkeypatch.setattr(topk_screen, "amx", lambda hardware=hardware: hardware)
        calls.clear()
        values, ids = inner_product_topk(queries[:n_queries], items, 7, exclude=0, backend="torch")
        assert bool(calls) == used, (hardware, n_queries)
        assert torch.equal(ids, want[1][:n_queries]) and torch.equal(values, want[0][:n_queries])
    monkeypatch.setattr(topk_screen, "hardware_bf16", lambda: True)
    monkeypatch.setattr(topk_screen, "amx", lambda: False)
    calls.clear()
    inner_product_topk(queries, items, 7, backend="torch")
    assert not calls, "bf16 dot products without AMX keep the float32 path"
    monkeypatch.setattr(topk_module, "SCREEN_BF16", False)
    monkeypatch.setattr(topk_screen, "amx", lambda: True)
    calls.clear()
    inner_product_topk(queries, items, 7, backend="torch")
    assert not calls
