"""Inner-product top-K: exact contract (ties, exclusions), Triton vs reference, property tests, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import kernel_device, spy_launches
from diffrec.kernels import KernelInputError, inner_product_topk
from diffrec.kernels.topk import chunked_topk, normalize_exclude
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def triton_device() -> str:
    return kernel_device("triton")


def reference(queries, items, k, exclude=None):
    """torch.topk(q @ e.T) in float64 with excluded ids removed; ties by lower index (stable sort)."""
    scores = queries.double().cpu() @ items.double().cpu().T  # (B, N)
    if exclude is not None:
        exclude = torch.as_tensor(exclude).cpu()
        if exclude.dim() <= 1:
            ids = exclude.reshape(-1)
            scores[:, ids[ids >= 0]] = float("-inf")
        else:
            for row, ids in enumerate(exclude):
                scores[row, ids[ids >= 0]] = float("-inf")
    values, ids = torch.sort(scores, dim=1, descending=True, stable=True)
    return values[:, :k], ids[:, :k]


def small_int_data(batch, n_items, dim, seed, device="cpu", dtype=torch.float32):
    """Integer-valued data: scores are exact in float32 and full of ties."""
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randint(-2, 3, (batch, dim), generator=gen).to(device=device, dtype=dtype)
    items = torch.randint(-2, 3, (n_items, dim), generator=gen).to(device=device, dtype=dtype)
    return queries, items


def check_near_ties(queries, items, k, scores, ids, tol):
    """Every returned item scores within ``tol`` of the true k-th score; scores are sorted and match."""
    true_scores = queries.double().cpu() @ items.double().cpu().T
    kth = torch.topk(true_scores, k, dim=1).values[:, -1]
    got = true_scores.gather(1, ids.cpu())
    assert (got >= kth[:, None] - tol).all()
    torch.testing.assert_close(scores.double().cpu(), got, rtol=tol, atol=tol)
    assert (scores[:, 1:] <= scores[:, :-1]).all()
    assert all(len(set(row.tolist())) == k for row in ids)


# --------------------------------------------------------------------------------------------
# Triton kernel vs reference (interpreter on CPU, or CUDA)
# --------------------------------------------------------------------------------------------

SHAPES = [
    (64, 1000, 64, 10),  # realistic
    (1, 300, 37, 1),  # B = 1, k = 1, d not a power of two, N not a multiple of the tile
    (5, 100, 20, 100),  # k = N
    (20, 257, 48, 128),  # k = 128, N = tile + 1
]


@pytest.mark.parametrize("batch, n_items, dim, k", SHAPES)
def test_triton_exact_on_integer_data(batch, n_items, dim, k):
    device = triton_device()
    queries, items = small_int_data(batch, n_items, dim, seed=batch + k, device=device)
    ref_v, ref_i = reference(queries, items, k)
    scores, ids = inner_product_topk(queries, items, k, backend="triton")
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64
    assert torch.equal(ids.cpu(), ref_i)
    assert torch.equal(scores.double().cpu(), ref_v)


@pytest.mark.parametrize("batch, n_items, dim, k", SHAPES[:2])
def test_triton_random_data(batch, n_items, dim, k):
    device = triton_device()
    gen = torch.Generator().manual_seed(7)
    queries = torch.randn(batch, dim, generator=gen).to(device)
    items = torch.randn(n_items, dim, generator=gen).to(device)
    scores, ids = inner_product_topk(queries, items, k, backend="triton")
    check_near_ties(queries, items, k, scores, ids, tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_precision(dtype):
    device = triton_device()
    gen = torch.Generator().manual_seed(8)
    queries = torch.randn(16, 40, generator=gen).to(device=device, dtype=dtype)
    items = torch.randn(500, 40, generator=gen).to(device=device, dtype=dtype)
    scores, ids = inner_product_topk(queries, items, 12, backend="triton")
    assert scores.dtype == dtype
    check_near_ties(queries, items, 12, scores, ids, tol=0.1)


def test_triton_exclusions_and_split_merge():
    device = triton_device()
    from diffrec.kernels._triton_topk import triton_topk

    queries, items = small_int_data(24, 700, 16, seed=3, device=device)
    history = torch.randint(0, 700, (24, 30), generator=torch.Generator().manual_seed(4))
    history[:, -5:] = 0  # padding id 0 is excluded too
    history[0, :3] = -1  # negative ids exclude nothing
    history = history.to(device)
    for exclude in (0, torch.tensor([0, 5, 9, 9, -1], device=device), history):
        ref_v, ref_i = reference(queries, items, 20, exclude)
        _scores, ids = inner_product_topk(queries, items, 20, exclude=exclude, backend="triton")
        assert torch.equal(ids.cpu(), ref_i)
        exclusion = normalize_exclude(exclude, 24, 700, queries.device)
        split_scores, split_ids = triton_topk(queries, items, 20, exclusion, splits=3)
        assert torch.equal(split_ids.cpu(), ref_i)
        assert torch.equal(split_scores.double().cpu(), ref_v)


def test_triton_signed_zero_ties():
    device = triton_device()
    queries = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], device=device)
    items = torch.zeros(40, 2, device=device)
    items[::3, 0] = -0.0  # scores are +0.0 or -0.0, which are equal
    _, ids = inner_product_topk(queries, items, 7, backend="triton")
    assert torch.equal(ids.cpu(), torch.arange(7).expand(2, 7))


def test_triton_non_contiguous_inputs():
    device = triton_device()
    queries, items = small_int_data(9, 120, 12, seed=5, device=device)
    q_nc = queries.T.contiguous().T  # same values, column-major
    e_nc = torch.stack([items, -items], dim=2).reshape(120, 24)[:, ::2]  # strided view of the same values
    assert not q_nc.is_contiguous() and not e_nc.is_contiguous()
    _, ref_i = reference(queries, items, 15)
    _, ids = inner_product_topk(q_nc, e_nc, 15, backend="triton")
    assert torch.equal(ids.cpu(), ref_i)


def test_triton_rejects_large_k_and_float64():
    device = triton_device()
    queries, items = small_int_data(2, 300, 8, seed=6, device=device)
    with pytest.raises(KernelInputError, match="k <= 256"):
        inner_product_topk(queries, items, 257, backend="triton")
    from diffrec.kernels import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="float64"):
        inner_product_topk(queries.double(), items.double(), 3, backend="triton")


# --------------------------------------------------------------------------------------------
# Triton paths only CUDA takes by default (forced in the interpreter), bf16, autocast
# --------------------------------------------------------------------------------------------


def _triton_topk_module():
    triton_device()  # skips without Triton
    from diffrec.kernels import _triton_topk

    return _triton_topk


@pytest.fixture
def launches(monkeypatch):
    """Record (kernel name, grid, meta) of every top-K kernel launch."""
    return spy_launches(_triton_topk_module(), monkeypatch)


@pytest.mark.parametrize("dim, chunk", [(200, 16), (200, 64), (1000, None), (40, 16)])
def test_triton_feature_dimension_streamed_in_chunks(dim, chunk, launches):
    """d larger than one chunk: scores accumulated over d-chunks (a small chunk forced, or the
    interpreter's 256-column chunk for d = 1000) equal the reference exactly on integer data."""
    tt = _triton_topk_module()
    device = triton_device()
    queries, items = small_int_data(20, 300, dim, seed=dim, device=device)
    ref_v, ref_i = reference(queries, items, 10)
    config = None if chunk is None else {"BLOCK_B": 16, "BLOCK_N": 64, "BLOCK_K": chunk}
    with tt.force_config(config=config):
        scores, ids = inner_product_topk(queries, items, 10, backend="triton")
    assert torch.equal(ids.cpu(), ref_i) and torch.equal(scores.double().cpu(), ref_v)
    (_, _, meta), = launches
    assert meta["BLOCK_K"] < meta["D_PAD"]  # the d-loop ran, not one block holding d


@pytest.mark.parametrize("batch, n_items, dim, k", [(40, 700, 48, 10), (20, 300, 300, 20), (9, 260, 24, 70)])
def test_triton_every_cuda_configuration_and_split_path(batch, n_items, dim, k, launches):
    """Every autotuning candidate for CUDA (block sizes, d chunks), run in the interpreter with
    CUDA's split count (132 multiprocessors), returns the exact top-K; so does the CUDA default."""
    tt = _triton_topk_module()
    device = triton_device()
    queries, items = small_int_data(batch, n_items, dim, seed=k, device=device)
    history = torch.randint(0, n_items, (batch, 7), generator=torch.Generator().manual_seed(k)).to(device)
    ref_v, ref_i = reference(queries, items, k, history)
    configs = tt.cuda_configs(k, dim, batch)
    assert configs[0].kwargs["BLOCK_N"] == 64  # not the interpreter's 128
    for config in [None, *configs]:
        with tt.force_config(gpu=True, config=config):
            scores, ids = inner_product_topk(queries, items, k, exclude=history, backend="triton")
        assert torch.equal(ids.cpu(), ref_i), config
        assert torch.equal(scores.double().cpu(), ref_v), config
    _, grid, _ = launches[0]
    assert grid[1] == triton_cdiv(n_items, tt.SPLIT_GRANULE) > 1  # one split per 128 items at this size


def triton_cdiv(a, b):
    return -(-a // b)


def test_triton_bf16_against_the_twin():
    """bf16 inputs: the kernel multiplies bf16 values exactly and accumulates in float32, then rounds
    the scores to bf16 (nearest-even). Stated tolerances: ids are the exact top-K up to float32
    accumulation (1e-4), scores are within half a bf16 ulp of the exact score of their id, and
    within one bf16 ulp of the twin's (which rounds its own float32-accumulated matmul)."""
    device = triton_device()
    gen = torch.Generator().manual_seed(21)
    queries = torch.randn(24, 96, generator=gen).to(device=device, dtype=torch.bfloat16)
    items = torch.randn(600, 96, generator=gen).to(device=device, dtype=torch.bfloat16)
    scores, ids = inner_product_topk(queries, items, 16, backend="triton")
    assert scores.dtype == torch.bfloat16
    exact = queries.double().cpu() @ items.double().cpu().T  # the bf16 values, exactly
    kth = torch.topk(exact, 16, dim=1).values[:, -1]
    got = exact.gather(1, ids.cpu())
    assert (got >= kth[:, None] - 1e-4).all()
    half_ulp = got.abs() * 2**-8 + 1e-4
    assert ((scores.double().cpu() - got).abs() <= half_ulp).all()
    twin_scores, _ = inner_product_topk(queries, items, 16, backend="torch")
    torch.testing.assert_close(scores.float(), twin_scores.float(), rtol=2**-7, atol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_autocast_casts_inputs_to_the_autocast_dtype(backend):
    device = triton_device() if backend == "triton" else kernel_device("torch")
    queries, items = small_int_data(12, 300, 24, seed=22, device=device)  # exact in bf16
    ref_v, ref_i = reference(queries, items, 9)
    with pytest.raises(KernelInputError, match="dtype"):
        inner_product_topk(queries.bfloat16(), items, 9, backend=backend)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        scores, ids = inner_product_topk(queries, items, 9, backend=backend)
        mixed_scores, mixed_ids = inner_product_topk(queries.bfloat16(), items, 9, backend=backend)
        wide_scores, _ = inner_product_topk(queries.double(), items.double(), 9, backend="torch")
    assert scores.dtype == mixed_scores.dtype == torch.bfloat16
    assert wide_scores.dtype == torch.float64  # float64 is not autocast
    assert torch.equal(ids.cpu(), ref_i) and torch.equal(mixed_ids.cpu(), ref_i)
    assert torch.equal(scores.double().cpu(), ref_v)


# --------------------------------------------------------------------------------------------
# PyTorch twin: exact contract (property tests)
# --------------------------------------------------------------------------------------------


@st.composite
def topk_problems(draw):
    batch = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 60))
    dim = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    queries, items = small_int_data(batch, n_items, dim, seed)
    kind = draw(st.sampled_from(["none", "int", "shared", "per_query"]))
    exclude = None
    if kind == "int":
        exclude = draw(st.integers(-1, n_items - 1))
    elif kind == "shared":
        exclude = torch.tensor(draw(st.lists(st.integers(-1, n_items - 1), max_size=6)), dtype=torch.int64)
    elif kind == "per_query":
        width = draw(st.integers(0, 5))
        rows = draw(st.lists(st.lists(st.integers(-1, n_items - 1), min_size=width, max_size=width),
                             min_size=batch, max_size=batch))
        exclude = torch.tensor(rows, dtype=torch.int64).reshape(batch, width)
    return queries, items, exclude


def allowed_counts(batch, n_items, exclude):
    if exclude is None:
        return [n_items] * batch
    exclude = torch.as_tensor(exclude)
    if exclude.dim() <= 1:
        ids = {i for i in exclude.reshape(-1).tolist() if i >= 0}
        return [n_items - len(ids)] * batch
    return [n_items - len({i for i in row.tolist() if i >= 0}) for row in exclude]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=topk_problems(), k_fraction=st.floats(0.0, 1.0), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_torch_twin_matches_reference(problem, k_fraction, dtype):
    queries, items, exclude = problem
    queries, items = queries.to(dtype), items.to(dtype)
    batch, n_items = queries.shape[0], items.shape[0]
    allowed = min(allowed_counts(batch, n_items, exclude))
    if allowed == 0:
        with pytest.raises(ValueError, match="allowed items"):
            inner_product_topk(queries, items, 1, exclude=exclude, backend="torch")
        return
    k = 1 + int(k_fraction * (allowed - 1))
    ref_v, ref_i = reference(queries, items, k, exclude)
    # float32 on CPU goes through faiss, float64 through the chunked matmul
    scores, ids = inner_product_topk(queries, items, k, exclude=exclude, backend="torch")
    assert scores.dtype == dtype
    assert torch.equal(ids, ref_i)
    assert torch.equal(scores.double(), ref_v)
    # the chunked path with tiny chunks exercises the running merge
    exclusion = normalize_exclude(exclude, batch, n_items, queries.device)
    _chunk_v, chunk_i = chunked_topk(queries, items, k, exclusion, chunk=max(k, 7))
    assert torch.equal(chunk_i, ref_i)
    if allowed < n_items or k < n_items:
        with pytest.raises(ValueError, match="allowed items|larger than the number of items"):
            inner_product_topk(queries, items, allowed + 1, exclude=exclude, backend="torch")


def test_torch_twin_random_data_and_large_catalogue():
    gen = torch.Generator().manual_seed(9)
    queries = torch.randn(33, 64, generator=gen)
    items = torch.randn(70_001, 64, generator=gen)
    scores, ids = inner_product_topk(queries, items, 20, backend="torch")
    check_near_ties(queries, items, 20, scores, ids, tol=1e-4)
    exclusion = normalize_exclude(None, 33, 70_001, queries.device)
    chunk_v, chunk_i = chunked_topk(queries, items, 20, exclusion)
    check_near_ties(queries, items, 20, chunk_v, chunk_i, tol=1e-4)


def test_float32_cpu_without_faiss(monkeypatch):
    from diffrec.kernels import topk

    monkeypatch.setattr(topk, "USE_FAISS", False)
    queries, items = small_int_data(7, 3000, 6, seed=12)
    history = torch.randint(0, 3000, (7, 12), generator=torch.Generator().manual_seed(13))
    _, ref_i = reference(queries, items, 25, history)
    _, ids = inner_product_topk(queries, items, 25, exclude=history, backend="torch")
    assert torch.equal(ids, ref_i)


def test_faiss_searches_batches_through_blas_and_restores_its_setting(monkeypatch):
    """faiss' default sends batches below 128,000 queries down its query-by-query path (several
    times slower); the twin switches BLAS on for its call only, also when faiss raises."""
    faiss = pytest.importorskip("faiss")
    from diffrec.kernels import topk

    seen = []
    real_knn = faiss.knn

    def knn(*args):
        seen.append(faiss.cvar.distance_compute_blas_threshold)
        return real_knn(*args)

    default = faiss.cvar.distance_compute_blas_threshold
    monkeypatch.setattr(faiss, "knn", knn)
    queries, items = small_int_data(32, 2000, 8, seed=21)
    _, ref_i = reference(queries, items, 10, None)
    _, ids = topk.faiss_topk(faiss, queries, items, 10, normalize_exclude(None, 32, 2000, queries.device))
    assert torch.equal(ids, ref_i)
    assert seen == [topk.FAISS_BLAS_MIN_QUERIES] and topk.FAISS_BLAS_MIN_QUERIES <= 16
    assert faiss.cvar.distance_compute_blas_threshold == default

    def broken(*args):
        raise RuntimeError("faiss failed")

    monkeypatch.setattr(faiss, "knn", broken)
    with pytest.raises(RuntimeError, match="faiss failed"):
        topk.faiss_topk(faiss, queries, items, 10, normalize_exclude(None, 32, 2000, queries.device))
    assert faiss.cvar.distance_compute_blas_threshold == default


def test_all_scores_tied_returns_lowest_indices():
    queries = torch.ones(3, 4)
    items = torch.ones(50, 4)
    for dtype in (torch.float32, torch.float64):
        _, ids = inner_product_topk(queries.to(dtype), items.to(dtype), 9, exclude=torch.tensor([1, 4]), backend="torch")
        expected = torch.tensor([0, 2, 3, 5, 6, 7, 8, 9, 10]).expand(3, 9)
        assert torch.equal(ids, expected)


def test_default_backend_on_cpu_is_torch_and_empty_batch():
    queries, items = small_int_data(4, 30, 5, seed=10)
    _, ids = inner_product_topk(queries, items, 5)
    assert torch.equal(ids, reference(queries, items, 5)[1])
    scores, ids = inner_product_topk(queries[:0], items, 5)
    assert scores.shape == ids.shape == (0, 5)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [None, "torch", "triton"])
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda q, e: dict(queries=q, items=e[:, :3], k=2), "d="),
        (lambda q, e: dict(queries=q.double(), items=e, k=2), "dtype"),
        (lambda q, e: dict(queries=q.long(), items=e.long(), k=2), "float16"),
        (lambda q, e: dict(queries=q, items=e.to("meta"), k=2), "is on"),
        (lambda q, e: dict(queries=q[0], items=e, k=2), "2 dimensions"),
        (lambda q, e: dict(queries=q, items=e, k=0), "k must be"),
        (lambda q, e: dict(queries=q, items=e, k=-3), "k must be"),
        (lambda q, e: dict(queries=q, items=e, k=2.0), "k must be an int"),
        (lambda q, e: dict(queries=q, items=e, k=11), "larger than the number of items"),
        (lambda q, e: dict(queries=q, items=e, k=10, exclude=0), "allowed items"),
        (lambda q, e: dict(queries=q, items=e, k=9, exclude=torch.tensor([[0, 1], [2, 2], [3, -1]])), "query 0"),
        (lambda q, e: dict(queries=q, items=e, k=2, exclude=10), "only 10 items"),
        (lambda q, e: dict(queries=q, items=e, k=2, exclude=torch.tensor([[1], [2]])), "one row per query"),
        (lambda q, e: dict(queries=q, items=e, k=2, exclude=torch.tensor([1.0])), "integer ids"),
        (lambda q, e: dict(queries=q, items=e, k=2, exclude=True), "bool"),
        (lambda q, e: dict(queries=q, items=e, k=2, exclude=torch.zeros(3, 1, 1, dtype=torch.long)), "2-D"),
    ],
)
def test_bad_input_raises_value_error(make, message, backend):
    queries, items = small_int_data(3, 10, 4, seed=11)
    with pytest.raises(KernelInputError, match=message):
        inner_product_topk(**make(queries, items), backend=backend)
