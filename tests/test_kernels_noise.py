"""Fused λ-noise injection: forward/backward relation, λ statistics, seeds, both backends, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import kernel_device
from diffrec.kernels import interpreter_enabled
from diffrec.kernels import KernelInputError, noise_inject

BACKENDS = ["torch", "triton"]


device_for = kernel_device


def lambdas(shape, delta, seed, backend, device, dtype=torch.float32):
    """λ as drawn by a backend: inject into h = 0 with x = 1."""
    batch, _seq_len, dim = shape
    h = torch.zeros(shape, device=device, dtype=dtype)
    x = torch.ones(batch, dim, device=device, dtype=dtype)
    return noise_inject(h, x, delta, seed, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 7, 37), (1, 1, 1), (2, 5, 256), (2, 3, 300), (4, 20, 64)])
def test_forward_and_backward_follow_lambda(backend, shape):
    device = device_for(backend)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(shape, generator=gen).to(device).requires_grad_()
    x = torch.randn(shape[0], shape[2], generator=gen).to(device).requires_grad_()
    lam = lambdas(shape, 0.3, 17, backend, device)  # (B, L, d)

    z = noise_inject(h, x, 0.3, 17, backend=backend)
    torch.testing.assert_close(z, h + lam * x[:, None, :], rtol=1e-6, atol=1e-6)

    dz = torch.randn(shape, generator=gen).to(device)
    dh, dx = torch.autograd.grad(z, (h, x), dz)
    torch.testing.assert_close(dh, dz)
    torch.testing.assert_close(dx, (lam * dz).sum(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_only_for_x(backend):
    device = device_for(backend)
    h = torch.randn(2, 4, 8, device=device)
    x = torch.randn(2, 8, device=device, requires_grad=True)
    z = noise_inject(h, x, 0.5, 3, backend=backend)
    (dx,) = torch.autograd.grad(z.sum(), (x,))
    torch.testing.assert_close(dx, lambdas((2, 4, 8), 0.5, 3, backend, device).sum(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(backend, dtype):
    device = device_for(backend)
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(3, 6, 40, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    x = torch.randn(3, 40, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    z = noise_inject(h, x, 0.2, 5, backend=backend)
    assert z.dtype == dtype
    lam = lambdas((3, 6, 40), 0.2, 5, backend, device, torch.float32)  # same λ: drawn in float32
    expected = h.float() + lam * x.float()[:, None, :]
    torch.testing.assert_close(z.float(), expected, rtol=2e-2, atol=2e-2)
    dz = torch.randn(3, 6, 40, generator=gen).to(device=device, dtype=dtype)
    dh, dx = torch.autograd.grad(z, (h, x), dz)
    assert dh.dtype == dx.dtype == dtype
    torch.testing.assert_close(dx.float(), (lam * dz.float()).sum(dim=1), rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("delta", [0.001, 1.0])
def test_lambda_statistics(backend, delta):
    device = device_for(backend)
    lam = lambdas((64, 32, 64), delta, 2024, backend, device).double().cpu()
    n = lam.numel()
    standard_error = delta / n**0.5
    assert abs(lam.mean().item() - delta) < 6 * standard_error
    assert abs(lam.std().item() - delta) < 6 * delta * (0.5 / n) ** 0.5 + 1e-12
    within_one_std = ((lam - delta).abs() < delta).double().mean().item()
    assert abs(within_one_std - 0.6827) < 0.01  # Gaussian, not merely the right moments
    # neighbouring columns (and the four Philox lanes of the Triton layout) are uncorrelated
    centred = (lam - delta).reshape(-1, 64)
    for shift in (1, 16):
        corr = (centred[:, :-shift] * centred[:, shift:]).mean() / centred.var()
        assert abs(corr.item()) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_repeats_and_differs(backend):
    device = device_for(backend)
    first = lambdas((4, 9, 33), 0.5, 99, backend, device)
    again = lambdas((4, 9, 33), 0.5, 99, backend, device)
    other = lambdas((4, 9, 33), 0.5, 100, backend, device)
    big_seed = lambdas((4, 9, 33), 0.5, 2**62 + 5, backend, device)
    assert torch.equal(first, again)
    assert (first == other).double().mean().item() < 0.01
    assert (first == big_seed).double().mean().item() < 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_delta_is_identity(backend):
    device = device_for(backend)
    h = torch.randn(2, 3, 10, device=device)
    z = noise_inject(h, torch.randn(2, 10, device=device), 0.0, 1, backend=backend)
    assert torch.equal(z, h)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    device = device_for(backend)
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(5, 3, 2, generator=gen).to(device).permute(2, 1, 0)  # (2, 3, 5), non-contiguous
    x = torch.randn(5, 2, generator=gen).to(device).T  # (2, 5), non-contiguous
    assert not h.is_contiguous() and not x.is_contiguous()
    z = noise_inject(h, x, 0.4, 8, backend=backend)
    torch.testing.assert_close(z, noise_inject(h.contiguous(), x.contiguous(), 0.4, 8, backend=backend))


def test_empty_sequence():
    for backend in ("torch", "triton"):
        if backend == "triton" and not interpreter_enabled():
            continue
        h = torch.zeros(2, 0, 4, requires_grad=True)
        x = torch.ones(2, 4, requires_grad=True)
        z = noise_inject(h, x, 0.1, 1, backend=backend)
        assert z.shape == (2, 0, 4)
        (dx,) = torch.autograd.grad(z.sum(), (x,), allow_unused=True)
        assert dx is None or torch.equal(dx, torch.zeros(2, 4))


def test_torch_twin_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, x: noise_inject(h, x, 0.3, 11, backend="torch"), (h, x))


def test_triton_gradcheck_float64():
    device = device_for("triton")
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda h, x: noise_inject(h, x, 0.3, 11, backend="triton"), (h, x))


@pytest.mark.parametrize(
    "h, x, delta, seed, message",
    [
        (torch.zeros(2, 3, 4), torch.zeros(2, 5), 0.1, 0, "x must have shape"),
        (torch.zeros(2, 3, 4), torch.zeros(3, 4), 0.1, 0, "x must have shape"),
        (torch.zeros(2, 4), torch.zeros(2, 4), 0.1, 0, "3 dimensions"),
        (torch.zeros(2, 3, 4, dtype=torch.int64), torch.zeros(2, 4), 0.1, 0, "float16"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.float64), 0.1, 0, "dtype"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4, device="meta"), 0.1, 0, "is on meta"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4), -0.1, 0, "delta"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4), float("nan"), 0, "delta"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4), "0.1", 0, "delta"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4), 0.1, -1, "seed"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4), 0.1, 2**63, "seed"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 4), 0.1, 1.5, "seed"),
    ],
)
@pytest.mark.parametrize("backend", [None, "torch", "triton"])
def test_bad_input_raises_value_error(h, x, delta, seed, message, backend):
    with pytest.raises(ValueError, match=message):
        noise_inject(h, x, delta, seed, backend=backend)
    with pytest.raises(KernelInputError):
        noise_inject(h, x, delta, seed, backend=backend)
