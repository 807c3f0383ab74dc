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


# --------------------------------------------------------------------------------------------
# Philox counter width, launch configurations, bf16 rounding, autocast
# --------------------------------------------------------------------------------------------


def _triton_noise():
    device_for("triton")  # skips without Triton
    from diffrec.kernels import _triton_noise

    return _triton_noise


def test_counter_width_is_int32_unless_the_largest_counter_overflows():
    tn = _triton_noise()
    assert tn.philox_layout(128) == (32, 1) and tn.philox_layout(1024) == (64, 4) and tn.philox_layout(300) == (64, 2)
    # realistic training and evaluation shapes: int32 counters
    for n_rows, d in ((512 * 50, 64), (512 * 50, 128), (4096 * 200, 256), (1, 1), (8192 * 200, 1024)):
        assert tn.counter_bits(n_rows, d) == 32
    # d = 128: 32 counters per row, so 2**26 rows reach exactly 2**31 counters (largest 2**31 - 1)
    assert tn.counter_bits(2**26, 128) == 32
    assert tn.counter_bits(2**26 + 1, 128) == 64
    # d = 1024: 4 tiles x 64 counters per row
    assert tn.counter_bits(2**23, 1024) == 32
    assert tn.counter_bits(2**23 + 1, 1024) == 64
    assert tn.counter_bits(10**10, 8) == 64
    with pytest.raises(ValueError, match="cannot address"), tn.force_config(counter_bits=32):
        tn.choose_counter_bits(2**30, 1024)


def test_kernels_get_the_counter_width_of_the_shape(monkeypatch):
    tn = _triton_noise()
    seen = []
    real_launch = tn.launch

    def spy(kernel, grid, args, fixed, *rest, **kw):
        seen.append(fixed["WIDE"])
        return real_launch(kernel, grid, args, fixed, *rest, **kw)

    monkeypatch.setattr(tn, "launch", spy)
    device = device_for("triton")
    h = torch.randn(2, 3, 40, device=device, requires_grad=True)
    x = torch.randn(2, 40, device=device, requires_grad=True)
    noise_inject(h, x, 0.3, 1, backend="triton").sum().backward()
    assert seen == [False, False]  # forward and backward, int32
    seen.clear()
    monkeypatch.setattr(tn, "counter_bits", lambda n_rows, d: 64)  # as for a huge launch
    noise_inject(h, x, 0.3, 1, backend="triton").sum().backward()
    assert seen == [True, True]


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("shape", [(3, 7, 37), (2, 5, 300), (1, 33, 1024)])
def test_both_counter_widths_regenerate_the_same_lambda(bits, shape):
    tn = _triton_noise()
    device = device_for("triton")
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(shape, generator=gen).to(device).requires_grad_()
    x = torch.randn(shape[0], shape[2], generator=gen).to(device).requires_grad_()
    dz = torch.randn(shape, generator=gen).to(device)
    with tn.force_config(counter_bits=bits):
        lam = lambdas(shape, 0.3, 17, "triton", device)
        z = noise_inject(h, x, 0.3, 17, backend="triton")
    torch.testing.assert_close(z, h + lam * x[:, None, :], rtol=1e-6, atol=1e-6)  # a GPU fuses the multiply-add
    # the backward runs outside the override: it must reuse the width the forward chose
    dh, dx = torch.autograd.grad(z, (h, x), dz)
    torch.testing.assert_close(dx, (lam * dz).sum(dim=1), rtol=1e-5, atol=1e-5)
    assert torch.equal(dh, dz)


def test_wide_counters_draw_gaussian_lambda():
    tn = _triton_noise()
    delta = 0.5
    with tn.force_config(counter_bits=64):
        lam = lambdas((32, 32, 64), delta, 2024, "triton", device_for("triton")).double().cpu()
    n = lam.numel()
    assert abs(lam.mean().item() - delta) < 6 * delta / n**0.5
    assert abs(lam.std().item() - delta) < 6 * delta * (0.5 / n) ** 0.5
    assert abs(((lam - delta).abs() < delta).double().mean().item() - 0.6827) < 0.015
    centred = (lam - delta).reshape(-1, 64)
    for shift in (1, 16):
        corr = (centred[:, :-shift] * centred[:, shift:]).mean() / centred.var()
        assert abs(corr.item()) < 0.03


def _noise_cases():
    """(shape, fwd config, bwd config) with every CUDA candidate and a few odd row counts."""
    device_for("triton")
    from diffrec.kernels._triton_noise import bwd_configs, fwd_configs

    cases = []
    for shape in ((3, 7, 37), (2, 9, 1024)):
        fwd, bwd = fwd_configs(shape[2]), bwd_configs(shape[2])
        for i in range(max(len(fwd), len(bwd))):
            cases.append((shape, fwd[min(i, len(fwd) - 1)], bwd[min(i, len(bwd) - 1)]))
    cases.append(((3, 7, 37), {"ROWS": 2}, {"ROWS": 4}))  # many row blocks and loop steps
    return cases


def test_every_block_configuration_draws_the_same_lambda():
    """λ depends on (seed, shape) only: every CUDA candidate of ROWS/warps, forced in the
    interpreter, gives bit-identical z and the same dx as the interpreter's fixed configuration."""
    tn = _triton_noise()
    device = device_for("triton")
    for shape, fwd, bwd in _noise_cases():
        gen = torch.Generator().manual_seed(6)
        h = torch.randn(shape, generator=gen).to(device).requires_grad_()
        x = torch.randn(shape[0], shape[2], generator=gen).to(device).requires_grad_()
        dz = torch.randn(shape, generator=gen).to(device)
        z_ref = noise_inject(h, x, 0.2, 9, backend="triton")
        (dx_ref,) = torch.autograd.grad(z_ref, (x,), dz)
        with tn.force_config(fwd=fwd, bwd=bwd):
            z = noise_inject(h, x, 0.2, 9, backend="triton")
            (dx,) = torch.autograd.grad(z, (x,), dz)
        assert torch.equal(z, z_ref), (shape, fwd, bwd)
        torch.testing.assert_close(dx, dx_ref, rtol=1e-6, atol=1e-6)
    with tn.force_config(gpu=True):  # the CUDA defaults, as a GPU runs them
        z = noise_inject(h, x, 0.2, 9, backend="triton")
    assert torch.equal(z, z_ref)


def _bf16_ulp_mismatch(got: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(fraction not bit-equal, fraction more than one bf16 ulp away)."""
    got, expected = got.float(), expected.float()
    far = (got - expected).abs() > expected.abs() * 2**-7 + 1e-30
    return (got != expected).double().mean().item(), far.double().mean().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_outputs_are_rounded_to_nearest_even(backend):
    """z and dx are computed in float32 and rounded once to bf16 to nearest-even (as a GPU and the
    twin do; the interpreter's own cast truncates, which would miss about half of them)."""
    device = device_for(backend)
    gen = torch.Generator().manual_seed(7)
    h = torch.randn(8, 20, 72, generator=gen).to(device=device, dtype=torch.bfloat16).requires_grad_()
    x = torch.randn(8, 72, generator=gen).to(device=device, dtype=torch.bfloat16).requires_grad_()
    dz = torch.randn(8, 20, 72, generator=gen).to(device=device, dtype=torch.bfloat16)
    lam = lambdas((8, 20, 72), 0.3, 5, backend, device)  # float32, the same λ
    z = noise_inject(h, x, 0.3, 5, backend=backend)
    (dx,) = torch.autograd.grad(z, (x,), dz)
    not_equal, far = _bf16_ulp_mismatch(z, (h.float() + lam * x.float()[:, None, :]).bfloat16())
    assert not_equal <= 0.02 and far == 0.0  # fused multiply-adds on a GPU may move a few ties
    not_equal, far = _bf16_ulp_mismatch(dx, (lam * dz.float()).sum(dim=1).bfloat16())
    assert not_equal <= 0.05 and far == 0.0  # float32 sums in another order


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_promotes_mixed_inputs(backend):
    device = device_for(backend)
    gen = torch.Generator().manual_seed(8)
    h = torch.randn(3, 5, 24, generator=gen).to(device).requires_grad_()  # float32 (e.g. after a LayerNorm)
    x = torch.randn(3, 24, generator=gen).to(device=device, dtype=torch.bfloat16).requires_grad_()  # a Linear's output
    dz = torch.randn(3, 5, 24, generator=gen).to(device)
    with pytest.raises(KernelInputError, match="dtype"):
        noise_inject(h, x, 0.3, 4, backend=backend)
    lam = lambdas((3, 5, 24), 0.3, 4, backend, device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        z = noise_inject(h, x, 0.3, 4, backend=backend)
        same = noise_inject(h.bfloat16(), x, 0.3, 4, backend=backend)
        dh, dx = torch.autograd.grad(z, (h, x), dz)  # a backward inside the region too
    assert z.dtype == torch.float32 and same.dtype == torch.bfloat16
    torch.testing.assert_close(z, h + lam * x.float()[:, None, :], rtol=1e-6, atol=1e-6)
    assert dh.dtype == torch.float32 and dx.dtype == torch.bfloat16
    torch.testing.assert_close(dh, dz)
    torch.testing.assert_close(dx.float(), (lam * dz).sum(dim=1), rtol=2**-7, atol=1e-2)
