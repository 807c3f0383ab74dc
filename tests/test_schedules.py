import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffrec.registry import list_parts, registry
from diffrec.schedules import GaussianDiffusion

list_parts()
SCHEDULES = registry("schedule").names()


def betas(name, T):
    return registry("schedule").build(name).betas(T)


def test_trunc_lin_hand_values():
    # T = 32: scale = 31.25, start = 0.003125 + 0.01, end = 0.625 + 0.01
    b = betas("trunc_lin", 32)
    assert b[0] == pytest.approx(0.013125)
    assert b[-1] == pytest.approx(0.635)
    assert np.allclose(np.diff(b), (0.635 - 0.013125) / 31)
    # T = 10: scale = 100, 2.01 > 1 so the end is truncated to 0.1 + 0.01
    b = betas("trunc_lin", 10)
    assert b[0] == pytest.approx(0.02) and b[-1] == pytest.approx(0.11)


def test_linear_hand_values():
    b = betas("linear", 1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    b = betas("linear", 32)
    assert b[0] == pytest.approx(0.003125) and b[-1] == pytest.approx(0.625)


def test_cosine_and_sqrt_from_their_curves():
    T = 32
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expect = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
    assert np.allclose(betas("cosine", T), expect)
    g = lambda s: 1 - math.sqrt(s + 1e-4)  # noqa: E731
    expect = [min(1 - g((i + 1) / T) / g(i / T), 0.999) for i in range(T)]
    assert np.allclose(betas("sqrt", T), expect)
    # the last cosine beta is clipped at 0.999 (alpha_bar(1) is ~0)
    assert betas("cosine", T)[-1] == pytest.approx(0.999)


def test_trunc_cos_starts_at_zero():
    T = 32
    f = lambda s: math.cos((s + 0.1) / 1.1 * math.pi / 2) ** 2  # noqa: E731
    b = betas("trunc_cos", T)
    assert b[0] == pytest.approx(1 - f(0.0))
    assert b[1] == pytest.approx(1 - f(1 / T) / f(0.0))
    assert len(b) == T


def test_pw_lin_pieces():
    T = 32
    b = betas("pw_lin", T)
    scale = 1000 / T
    assert np.allclose(b[:10], np.linspace(scale * 1e-4 + 0.01, scale * 1e-4, 10))
    assert np.allclose(b[10:], np.linspace(scale * 1e-4, scale * 0.02, T - 10))
    with pytest.raises(ValueError, match="more than 10"):
        betas("pw_lin", 10)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(SCHEDULES), T=st.integers(20, 1500))
def test_schedule_invariants(name, T):
    b = betas(name, T)
    assert b.shape == (T,) and b.dtype == np.float64
    assert (b > 0).all() and (b <= 1).all()
    diff = GaussianDiffusion(registry("schedule").build(name), T)
    assert (np.diff(diff.alphas_cumprod) < 0).all()  # signal only decreases
    assert np.isfinite(diff.reverse_log_variance).all()


def test_diffusion_posterior_and_noise():
    diff = GaussianDiffusion(registry("schedule").build("trunc_lin"), 32)
    # at t = 0 the posterior mean is x0_hat itself (c1 = 1, c2 = 0)
    assert diff.posterior_mean_coef1[0] == pytest.approx(1.0)
    assert diff.posterior_mean_coef2[0] == pytest.approx(0.0)
    ab, abp, beta = diff.alphas_cumprod, diff.alphas_cumprod_prev, diff.betas
    t = 7
    assert diff.posterior_variance[t] == pytest.approx((1 - abp[t]) / (1 - ab[t]) * beta[t])
    assert diff.posterior_mean_coef1[t] == pytest.approx(math.sqrt(abp[t]) * beta[t] / (1 - ab[t]))
    assert diff.posterior_mean_coef2[t] == pytest.approx(math.sqrt(1 - beta[t]) * (1 - abp[t]) / (1 - ab[t]))
    x0, eps = torch.randn(4, 8), torch.randn(4, 8)
    ts = torch.tensor([0, 3, 7, 31])
    got = diff.add_noise(x0, eps, ts)
    for i, s in enumerate(ts.tolist()):
        want = math.sqrt(ab[s]) * x0[i] + math.sqrt(1 - ab[s]) * eps[i]
        assert torch.allclose(got[i], want, atol=1e-6)
    # the public code's reverse variance: [beta~_1, beta_1, ..., beta_{T-1}]
    assert math.exp(diff.reverse_log_variance[0]) == pytest.approx(diff.posterior_variance[1])
    assert np.allclose(np.exp(diff.reverse_log_variance[1:]), beta[1:])
    assert torch.allclose(diff.scale_timesteps(torch.tensor([16])), torch.tensor([500.0]))


def test_invalid_betas_rejected():
    class Bad:
        def betas(self, n):
            return np.full(n, 1.5)

    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        GaussianDiffusion(Bad(), 5)
    with pytest.raises(ValueError, match="for T = 12"):
        GaussianDiffusion(registry("schedule").build("linear"), 12)  # the end beta would be 1.67
    with pytest.raises(ValueError, match=">= 1"):
        GaussianDiffusion(registry("schedule").build("linear"), 0)
