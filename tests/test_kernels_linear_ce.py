"""Linear cross-entropy: both backends vs F.cross_entropy(q @ E.T), gradients, stability, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import kernel_device, spy_launches
import torch.nn.functional as F
from diffrec.kernels import KernelInputError, linear_cross_entropy
from diffrec.kernels.linear_ce import TorchLinearCrossEntropy


device_for = kernel_device


def problem(batch, n_items, dim, device, dtype=torch.float32, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    queries = (torch.randn(batch, dim, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_()
    items = torch.randn(n_items, dim, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    targets = torch.randint(0, n_items, (batch,), generator=gen).to(device)
    return queries, items, targets


def reference(queries, items, targets, upstream=1.0):
    """Loss and gradients of the unfused float64 computation."""
    q = queries.detach().double().requires_grad_()
    e = items.detach().double().requires_grad_()
    loss = F.cross_entropy(q @ e.T, targets)
    dq, de = torch.autograd.grad(loss * upstream, (q, e))
    return loss, dq, de


SHAPES = [
    (64, 1000, 64),  # realistic
    (1, 300, 37),  # B = 1, odd d, N not a multiple of the tile
    (70, 129, 20),  # B not a multiple of the block, N = tile + 1
    (3, 5, 16),  # fewer items than a tile
]
TOL = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float64: 1e-10}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("batch, n_items, dim", SHAPES)
def test_matches_unfused_float32(backend, batch, n_items, dim):
    device = device_for(backend)
    queries, items, targets = problem(batch, n_items, dim, device, seed=batch)
    ref_loss, ref_dq, ref_de = reference(queries, items, targets, upstream=2.5)
    loss = linear_cross_entropy(queries, items, targets, backend=backend)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    dq, de = torch.autograd.grad(loss * 2.5, (queries, items))
    tol = TOL[torch.float32]
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(dq.double(), ref_dq, rtol=tol, atol=tol)
    torch.testing.assert_close(de.double(), ref_de, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(backend, dtype):
    device = device_for(backend)
    queries, items, targets = problem(40, 300, 48, device, dtype=dtype, scale=0.5, seed=1)
    ref_loss, ref_dq, ref_de = reference(queries, items, targets)
    loss = linear_cross_entropy(queries, items, targets, backend=backend)
    dq, de = torch.autograd.grad(loss, (queries, items))
    assert loss.dtype == torch.float32 and dq.dtype == de.dtype == dtype
    tol = TOL[dtype]
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(dq.double(), ref_dq, rtol=tol, atol=tol)
    torch.testing.assert_close(de.double(), ref_de, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_large_logits_are_stable(backend):
    device = device_for(backend)
    queries, items, targets = problem(8, 200, 32, device, scale=40.0, seed=2)  # logits in the hundreds
    ref_loss, ref_dq, ref_de = reference(queries, items, targets)
    loss = linear_cross_entropy(queries, items, targets, backend=backend)
    dq, de = torch.autograd.grad(loss, (queries, items))
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dq.double(), ref_dq, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(de.double(), ref_de, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradient_for_one_input_only_and_repeated_targets(backend):
    device = device_for(backend)
    queries, items, _ = problem(12, 90, 24, device, seed=3)
    targets = torch.tensor([5] * 6 + [89] * 6, device=device)  # repeated targets accumulate in dE
    _, ref_dq, ref_de = reference(queries, items, targets)
    (de,) = torch.autograd.grad(linear_cross_entropy(queries.detach(), items, targets, backend=backend), (items,))
    torch.testing.assert_close(de.double(), ref_de, rtol=2e-5, atol=2e-5)
    (dq,) = torch.autograd.grad(linear_cross_entropy(queries, items.detach(), targets, backend=backend), (queries,))
    torch.testing.assert_close(dq.double(), ref_dq, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_contiguous_inputs(backend):
    device = device_for(backend)
    queries, items, targets = problem(10, 50, 12, device, seed=4)
    q_nc = queries.detach().T.contiguous().T.requires_grad_()
    e_nc = items.detach().T.contiguous().T.requires_grad_()
    assert not q_nc.is_contiguous() and not e_nc.is_contiguous()
    ref_loss, ref_dq, ref_de = reference(queries, items, targets)
    loss = linear_cross_entropy(q_nc, e_nc, targets, backend=backend)
    dq, de = torch.autograd.grad(loss, (q_nc, e_nc))
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dq.double(), ref_dq, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(de.double(), ref_de, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_torch_twin_chunk_sizes(chunk):
    queries, items, targets = problem(6, 50, 8, "cpu", dtype=torch.float64, seed=5)
    ref_loss, ref_dq, ref_de = reference(queries, items, targets)
    loss = TorchLinearCrossEntropy.apply(queries, items, targets, min(chunk, 50)).mean()
    dq, de = torch.autograd.grad(loss, (queries, items))
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(dq, ref_dq)
    torch.testing.assert_close(de, ref_de)


@pytest.mark.parametrize("chunk", [1, 5, 12])
def test_torch_twin_gradcheck_float64(chunk):
    queries, items, targets = problem(3, 12, 4, "cpu", dtype=torch.float64, seed=5)
    assert torch.autograd.gradcheck(lambda q, e: TorchLinearCrossEntropy.apply(q, e, targets, chunk), (queries, items))
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda q, e: linear_cross_entropy(q, e, targets, reduction=reduction, backend="torch"), (queries, items))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("batch, n_items, dim", [(70, 129, 20), (5, 300, 37)])
def test_reductions_with_a_gradient_per_row(backend, reduction, batch, n_items, dim):
    """Each row's loss, and gradients for a different upstream gradient on every row (some zero, some negative)."""
    device = device_for(backend)
    queries, items, targets = problem(batch, n_items, dim, device, seed=11)
    upstream = torch.randn(batch, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    upstream[::4] = 0.0
    q = queries.detach().double().requires_grad_()
    e = items.detach().double().requires_grad_()
    ref = F.cross_entropy(q @ e.T, targets, reduction=reduction)
    loss = linear_cross_entropy(queries, items, targets, reduction=reduction, backend=backend)
    assert loss.shape == ref.shape and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-5)
    weight = upstream.to(device) if reduction == "none" else upstream[0].to(device)
    ref_dq, ref_de = torch.autograd.grad((ref * weight).sum(), (q, e))
    dq, de = torch.autograd.grad((loss * weight.float()).sum(), (queries, items))
    torch.testing.assert_close(dq.double(), ref_dq, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(de.double(), ref_de, rtol=2e-5, atol=2e-5)


def test_unknown_reduction_is_refused():
    queries, items, targets = problem(2, 5, 4, "cpu")
    with pytest.raises(KernelInputError, match="reduction must be one of mean, sum, none"):
        linear_cross_entropy(queries, items, targets, reduction="max")


def test_default_backend_on_cpu():
    queries, items, targets = problem(4, 30, 8, "cpu", seed=6)
    ref_loss, _, _ = reference(queries, items, targets)
    torch.testing.assert_close(linear_cross_entropy(queries, items, targets).double(), ref_loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", [None, "torch", "triton"])
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda q, e, t: (q, e[:, :3], t), "d="),
        (lambda q, e, t: (q, e.double(), t), "dtype"),
        (lambda q, e, t: (q.long(), e.long(), t), "float16"),
        (lambda q, e, t: (q, e.to("meta"), t), "is on"),
        (lambda q, e, t: (q, e, t.int()), "int64"),
        (lambda q, e, t: (q, e, t.float()), "int64"),
        (lambda q, e, t: (q, e, t[:2]), "shape"),
        (lambda q, e, t: (q, e, t.to("meta")), "are on"),
        (lambda q, e, t: (q, e, t + 10), "outside"),
        (lambda q, e, t: (q, e, t - 10), "outside"),
        (lambda q, e, t: (q[:0], e, t[:0]), "empty"),
        (lambda q, e, t: (q, e[:0], t), "no items"),
        (lambda q, e, t: (q, e, t.tolist()), "torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error(make, message, backend):
    queries, items, targets = problem(3, 10, 4, "cpu", seed=7)
    with pytest.raises(KernelInputError, match=message):
        linear_cross_entropy(*make(queries.detach(), items.detach(), targets), backend=backend)


# --------------------------------------------------------------------------------------------
# Triton paths only CUDA takes by default (forced in the interpreter), bf16, autocast
# --------------------------------------------------------------------------------------------


def _triton_lce():
    device_for("triton")  # skips without Triton
    from diffrec.kernels import _triton_linear_ce

    return _triton_linear_ce


@pytest.fixture
def launches(monkeypatch):
    """Record (kernel name, grid, meta) of every linear cross-entropy kernel launch."""
    return spy_launches(_triton_lce(), monkeypatch)


def check_against_reference(queries, items, targets, backend="triton", tol=TOL[torch.float32], upstream=1.5):
    ref_loss, ref_dq, ref_de = reference(queries, items, targets, upstream=upstream)
    loss = linear_cross_entropy(queries, items, targets, backend=backend)
    dq, de = torch.autograd.grad(loss * upstream, (queries, items))
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(dq.double(), ref_dq, rtol=tol, atol=tol)
    torch.testing.assert_close(de.double(), ref_de, rtol=tol, atol=tol)


def test_triton_large_feature_size_streams_d(launches):
    """d = 600 > 512 (formerly refused): logits accumulated over d-chunks and the gradients produced
    in column blocks, each block recomputing the logits."""
    device = device_for("triton")
    queries, items, targets = problem(6, 150, 600, device, scale=0.1, seed=8)
    check_against_reference(queries, items, targets)
    by_kernel = {name: (grid, meta) for name, grid, meta in launches}
    assert by_kernel["lce_fwd"][1]["BLOCK_K"] < by_kernel["lce_fwd"][1]["D_PAD"] == 1024
    for name, axis in (("lce_bwd_q", 2), ("lce_bwd_e", 1)):  # interpreter: 3 blocks of 256; CUDA fp32: 5 of 128
        grid, meta = by_kernel[name]
        assert grid[axis] == -(-600 // meta["BLOCK_DO"]) > 1


@pytest.mark.parametrize("batch, n_items, dim", [(20, 300, 100), (70, 129, 20)])
def test_triton_small_forced_chunks_and_column_blocks(batch, n_items, dim, launches):
    """A 16-column d-chunk and 32-column gradient blocks forced in the interpreter (the d-loop at
    sizes where it would not run by default), with three item splits."""
    tl_ce = _triton_lce()
    device = device_for("triton")
    queries, items, targets = problem(batch, n_items, dim, device, seed=dim)
    blocks = {"BLOCK_B": 16, "BLOCK_N": 32, "BLOCK_K": 16}
    with tl_ce.force_config(fwd=blocks, bwd_q=dict(blocks, BLOCK_DO=32), bwd_e=dict(blocks, BLOCK_DO=32), splits=3):
        check_against_reference(queries, items, targets)
    by_kernel = {name: grid for name, grid, _ in launches}
    assert by_kernel["lce_fwd"][1] == min(3, -(-n_items // 128))
    assert by_kernel["lce_bwd_q"][2] == -(-dim // 32)


@pytest.mark.parametrize("batch, n_items, dim", [(70, 700, 48), (20, 300, 300)])
def test_triton_every_cuda_configuration_and_split_path(batch, n_items, dim, launches):
    """Every autotuning candidate for CUDA, and the CUDA default (BLOCK_N = 64 or 32, not the
    interpreter's 128), run in the interpreter with CUDA's item splits (132 multiprocessors) and
    their log-sum-exp combine; values and gradients match the unfused float64 computation."""
    tl_ce = _triton_lce()
    device = device_for("triton")
    queries, items, targets = problem(batch, n_items, dim, device, seed=batch)
    names = ("fwd", "bwd_q", "bwd_e")
    candidates = {name: tl_ce.cuda_configs(name, batch, dim) for name in names}
    assert all(c[0].kwargs["BLOCK_N"] < tl_ce._INTERPRETER_BLOCK_N for c in candidates.values())
    for i in range(max(len(c) for c in candidates.values())):
        forced = {name: c[min(i, len(c) - 1)] for name, c in candidates.items()}
        with tl_ce.force_config(gpu=True, **forced):
            check_against_reference(queries, items, targets)
    with tl_ce.force_config(gpu=True):
        check_against_reference(queries, items, targets)
    splits = {grid[1] for name, grid, _ in launches if name == "lce_fwd"}
    assert splits == {-(-n_items // tl_ce.SPLIT_GRANULE)} and splits != {1}


def _gpu_style_gradients(queries, items, targets, lse):
    """dq, dE as the kernels compute them on a GPU for bf16 inputs: P = softmax - onehot (scaled by
    1/B) rounded to bf16, products of bf16 values summed in float32, dE rounded to bf16."""
    q, e = queries.detach().float(), items.detach().float()
    probs = torch.exp(q @ e.T - lse[:, None])
    probs[torch.arange(q.shape[0]), targets] -= 1.0
    probs = (probs / q.shape[0]).bfloat16().float()
    return (probs @ e).bfloat16(), (probs.T @ q).bfloat16()


def test_triton_bf16_follows_the_gpu_numerics():
    """bf16 without the interpreter's upcast: P is rounded to bf16 before P @ E and Pᵀ @ Q as on the
    tensor cores, sums run in float32, dE is rounded to nearest-even. Against a PyTorch model of
    exactly that, almost every gradient element is bit-equal (the rest differ in float32 summation
    order), none by more than one bf16 ulp beyond 1e-3 of the largest value."""
    tl_ce = _triton_lce()
    device = device_for("triton")
    queries, items, targets = problem(40, 300, 48, device, dtype=torch.bfloat16, scale=0.5, seed=1)
    loss = linear_cross_entropy(queries, items, targets, backend="triton")
    dq, de = torch.autograd.grad(loss, (queries, items))
    cfg = tl_ce._Config(queries.detach(), items.shape[0])
    _, lse = tl_ce.lce_forward(queries.detach(), items.detach(), targets, cfg)
    model_dq, model_de = _gpu_style_gradients(queries, items, targets, lse)
    for got, model in ((dq, model_dq), (de, model_de)):
        assert got.dtype == torch.bfloat16
        assert (got == model).double().mean().item() >= 0.95
        torch.testing.assert_close(got.float(), model.float(), rtol=2**-7, atol=1e-3 * model.float().abs().max().item())


@pytest.mark.parametrize("dim", [48, 300])
def test_triton_bf16_against_the_twin(dim):
    """bf16 Triton vs the bf16 twin (which keeps P in float32). Stated tolerances: loss within 1e-5
    (both accumulate logits of the same bf16 values in float32); gradients within 2**-7 relative
    plus 2**-6 of the largest element (P's bf16 rounding, then one bf16 rounding of each result)."""
    device = device_for("triton")
    queries, items, targets = problem(40, 300, dim, device, dtype=torch.bfloat16, scale=0.5, seed=1)
    loss = linear_cross_entropy(queries, items, targets, backend="triton")
    dq, de = torch.autograd.grad(loss, (queries, items))
    twin_loss = linear_cross_entropy(queries, items, targets, backend="torch")
    twin_dq, twin_de = torch.autograd.grad(twin_loss, (queries, items))
    torch.testing.assert_close(loss, twin_loss, rtol=1e-5, atol=1e-5)
    for got, twin in ((dq, twin_dq), (de, twin_de)):
        scale = twin.float().abs().max().item()
        torch.testing.assert_close(got.float(), twin.float(), rtol=2**-7, atol=2**-6 * scale)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_autocast_casts_to_the_autocast_dtype(backend):
    """Under autocast, float32 items and bf16 (a Linear's output) or float32 queries are cast to
    bf16 as autocast does for a matmul; the loss stays float32, the gradients come back in the
    inputs' dtypes and match the unfused computation on the bf16-rounded inputs."""
    device = device_for(backend)
    queries, items, targets = problem(24, 200, 32, device, scale=0.5, seed=9)
    with pytest.raises(KernelInputError, match="dtype"):
        linear_cross_entropy(queries.bfloat16(), items, targets, backend=backend)
    q16 = queries.detach().bfloat16().requires_grad_()
    ref_loss, ref_dq, ref_de = reference(q16, items.detach().bfloat16(), targets)
    tol = TOL[torch.bfloat16]
    for q in (queries, q16):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = linear_cross_entropy(q, items, targets, backend=backend)
            dq, de = torch.autograd.grad(loss, (q, items))  # a backward inside the region too
        assert loss.dtype == torch.float32 and dq.dtype == q.dtype and de.dtype == torch.float32
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dq.double(), ref_dq, rtol=tol, atol=tol)
        torch.testing.assert_close(de.double(), ref_de, rtol=tol, atol=tol)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):  # float64 is left alone
        loss64 = linear_cross_entropy(queries.double(), items.double(), targets, backend="torch")
    assert loss64.dtype == torch.float64
