"""Linear cross-entropy: both backends vs F.cross_entropy(q @ E.T), gradients, stability, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import kernel_device
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
    loss = TorchLinearCrossEntropy.apply(queries, items, targets, min(chunk, 50))
    dq, de = torch.autograd.grad(loss, (queries, items))
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(dq, ref_dq)
    torch.testing.assert_close(de, ref_de)


@pytest.mark.parametrize("chunk", [1, 5, 12])
def test_torch_twin_gradcheck_float64(chunk):
    queries, items, targets = problem(3, 12, 4, "cpu", dtype=torch.float64, seed=5)
    assert torch.autograd.gradcheck(lambda q, e: TorchLinearCrossEntropy.apply(q, e, targets, chunk), (queries, items))
    assert torch.autograd.gradcheck(lambda q, e: linear_cross_entropy(q, e, targets, backend="torch"), (queries, items))


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


def test_triton_rejects_large_feature_size():
    device = device_for("triton")
    queries, items, targets = problem(2, 5, 513, device, seed=8)
    with pytest.raises(KernelInputError, match="d <= 512"):
        linear_cross_entropy(queries, items, targets, backend="triton")
