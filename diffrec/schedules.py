"""Noise schedules and the Gaussian diffusion they define.

A schedule maps the number of diffusion steps ``T`` to the variances
``beta_1..beta_T`` (float64). The definitions match DiffuRec's public code,
which extends the DDPM/Diffusion-LM schedules with truncated variants; the
paper's truncated linear schedule is its Eq. (14).

:class:`GaussianDiffusion` derives every quantity of the forward process
``q(x_t | x_0)`` (paper Eq. 15-16) and of the posterior
``q(x_{t-1} | x_t, x_0)`` (Eq. 17-18) used by the reverse samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Protocol, runtime_checkable

import numpy as np
import torch

from diffrec.errors import ConfigError
from diffrec.registry import register

MAX_BETA = 0.999


@runtime_checkable
class NoiseSchedule(Protocol):
    """The contract of a ``schedule`` part: ``betas(T)`` -> array of T variances in (0, 1]."""

    def betas(self, num_steps: int) -> np.ndarray: ...


def betas_from_alpha_bar(num_steps: int, alpha_bar: Callable[[float], float], *, shift_left: bool = False) -> np.ndarray:
    """Discretise a continuous cumulative-signal curve ``alpha_bar(s)``, s in [0, 1].

    ``beta_i = 1 - alpha_bar((i+1)/T) / alpha_bar(i/T)``, clipped at 0.999.
    ``shift_left`` starts with ``1 - alpha_bar(0)`` and drops the last interval
    (the public code's truncated cosine).
    """
    betas = []
    if shift_left:
        betas.append(min(1.0 - alpha_bar(0.0), MAX_BETA))
        intervals = range(num_steps - 1)
    else:
        intervals = range(num_steps)
    for i in intervals:
        s1, s2 = i / num_steps, (i + 1) / num_steps
        betas.append(min(1.0 - alpha_bar(s2) / alpha_bar(s1), MAX_BETA))
    return np.asarray(betas, dtype=np.float64)


class _Schedule:
    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register("schedule", "linear")
class LinearSchedule(_Schedule):
    """DDPM linear betas (Ho et al. 2020), by default rescaled so that any T covers the 1000-step range."""

    def __init__(
        self,
        *,
        beta_start: Annotated[float, "the first beta (at T = 1000)"] = 1e-4,
        beta_end: Annotated[float, "the last beta (at T = 1000)"] = 0.02,
        rescale: Annotated[bool, "scale both by 1000 / T (DiffuRec's code); false: the same betas for any T (DreamRec's, PreferDiff's)"] = True,
    ) -> None:
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ConfigError(f"schedule linear: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.beta_start, self.beta_end, self.rescale = beta_start, beta_end, rescale

    def betas(self, num_steps: int) -> np.ndarray:
        scale = 1000.0 / num_steps if self.rescale else 1.0
        return np.linspace(scale * self.beta_start, scale * self.beta_end, num_steps, dtype=np.float64)


@register("schedule", "exp")
class ExponentialSchedule(_Schedule):
    """VP-SDE betas discretised (DreamRec's "exp"): beta_i = 1 - exp(-b_min / T - x_i (b_max - b_min) / (2 T^2)), x = linspace(1, 2T + 1, T)."""

    def __init__(
        self,
        *,
        beta_min: Annotated[float, "beta_min of the variance-preserving SDE"] = 0.1,
        beta_max: Annotated[float, "beta_max of the variance-preserving SDE"] = 10.0,
    ) -> None:
        if not 0.0 < beta_min < beta_max:
            raise ConfigError(f"schedule exp: need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max

    def betas(self, num_steps: int) -> np.ndarray:
        x = np.linspace(1, 2 * num_steps + 1, num_steps, dtype=np.float64)
        return 1.0 - np.exp(-self.beta_min / num_steps - x * 0.5 * (self.beta_max - self.beta_min) / (num_steps * num_steps))


@register("schedule", "cosine")
class CosineSchedule(_Schedule):
    """Improved-DDPM cosine curve alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2) (Nichol & Dhariwal, Eq. 17)."""

    def __init__(self, *, s: Annotated[float, "offset that keeps beta_1 from vanishing (0.008 in improved DDPM)"] = 0.008) -> None:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"schedule cosine: s must lie in [0, 1), got {s}")
        self.s = s

    def betas(self, num_steps: int) -> np.ndarray:
        return betas_from_alpha_bar(num_steps, lambda u: math.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2)

    def __repr__(self) -> str:
        return f"CosineSchedule(s={self.s})"


@register("schedule", "sqrt")
class SqrtSchedule(_Schedule):
    """Diffusion-LM sqrt curve alpha_bar(s) = 1 - sqrt(s + 1e-4)."""

    def betas(self, num_steps: int) -> np.ndarray:
        return betas_from_alpha_bar(num_steps, lambda s: 1.0 - math.sqrt(s + 1e-4))


@register("schedule", "trunc_cos")
class TruncatedCosineSchedule(_Schedule):
    """Cosine curve cos^2((s + 0.1) / 1.1 * pi / 2), shifted to start at s = 0."""

    def betas(self, num_steps: int) -> np.ndarray:
        return betas_from_alpha_bar(num_steps, lambda s: math.cos((s + 0.1) / 1.1 * math.pi / 2) ** 2, shift_left=True)


@register("schedule", "trunc_lin")
class TruncatedLinearSchedule(_Schedule):
    """DiffuRec's default (paper Eq. 14): linear betas offset by 0.01, end truncated when it would pass 1."""

    def betas(self, num_steps: int) -> np.ndarray:
        scale = 1000.0 / num_steps
        start = scale * 1e-4 + 0.01
        end = scale * 0.02 + 0.01
        if end > 1:
            end = scale * 0.001 + 0.01
        return np.linspace(start, end, num_steps, dtype=np.float64)


@register("schedule", "pw_lin")
class PiecewiseLinearSchedule(_Schedule):
    """Two linear pieces: 10 steps from scale*1e-4 + 0.01 down to scale*1e-4, then up to scale*0.02."""

    def betas(self, num_steps: int) -> np.ndarray:
        if num_steps <= 10:
            raise ConfigError("the pw_lin schedule needs more than 10 diffusion steps")
        scale = 1000.0 / num_steps
        start, mid, end = scale * 1e-4 + 0.01, scale * 1e-4, scale * 0.02
        first = np.linspace(start, mid, 10, dtype=np.float64)
        second = np.linspace(mid, end, num_steps - 10, dtype=np.float64)
        return np.concatenate([first, second])


class GaussianDiffusion:
    """The forward process and posterior of a schedule with ``num_steps`` steps (t = 0..T-1).

    Arrays are float64 numpy (for accuracy) and gathered per batch into the
    caller's dtype and device.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int) -> None:
        if num_steps < 1:
            raise ConfigError(f"the number of diffusion steps must be >= 1, got {num_steps}")
        self._setup(np.asarray(schedule.betas(num_steps), dtype=np.float64), num_steps)
        #: the model's timestep of each step of this process (the identity; see ``respaced``)
        self.timestep_map = np.arange(num_steps)

    @classmethod
    def respaced(cls, parent: GaussianDiffusion, timesteps: list[int]) -> GaussianDiffusion:
        """The process on a subsequence of ``parent``'s steps (increasing), as improved DDPM respaces it:
        beta'_i = 1 - abar(t_i) / abar(t_{i-1}), so that abar is unchanged at the kept steps.
        ``timestep_map`` gives each new step's timestep in ``parent`` (what the denoiser sees)."""
        kept = parent.alphas_cumprod[np.asarray(timesteps)]
        previous = np.append(1.0, kept[:-1])
        self = cls.__new__(cls)
        self._setup(1.0 - kept / previous, len(timesteps))
        self.timestep_map = np.asarray(timesteps)
        self.parent_steps = parent.num_steps
        return self

    def _setup(self, betas: np.ndarray, num_steps: int) -> None:
        if betas.shape != (num_steps,):
            raise ConfigError(f"schedule returned {betas.shape} betas for {num_steps} steps")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ConfigError(
                f"schedule betas must lie in (0, 1] but range over [{betas.min():.3g}, {betas.max():.3g}] for T = {num_steps}; choose another schedule or T"
            )
        self.num_steps = num_steps
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        # posterior q(x_{t-1} | x_t, x_0) = N(c1 x_0 + c2 x_t, beta_tilde) (Eq. 17-18)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        # reverse-step log variance of the public code: [beta_tilde_1, beta_1, ..., beta_{T-1}]
        fixed = np.append(self.posterior_variance[1], betas[1:]) if num_steps > 1 else self.posterior_variance.copy()
        self.reverse_log_variance = np.log(np.maximum(fixed, 1e-20))

    @staticmethod
    def _gather(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        vals = torch.as_tensor(arr, device=t.device)[t].to(like.dtype)  # (B,)
        return vals.view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Eq. 16)."""
        return self._gather(self.sqrt_alphas_cumprod, t, x0) * x0 + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def posterior_mean(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x0_hat) (Eq. 17)."""
        return self._gather(self.posterior_mean_coef1, t, x_t) * x0_hat + self._gather(self.posterior_mean_coef2, t, x_t) * x_t

    def reverse_std(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return torch.exp(0.5 * self._gather(self.reverse_log_variance, t, like))

    def scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps as the step embedding sees them: t * 1000 / T."""
        return t.float() * (1000.0 / self.num_steps)

    # ------------------------------------------------ prediction types
    def x0_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (Eq. 16 solved for x_0)."""
        return (x_t - self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / self._gather(self.sqrt_alphas_cumprod, t, x_t)

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t) (Eq. 16 solved for the noise)."""
        return (x_t - self._gather(self.sqrt_alphas_cumprod, t, x_t) * x0) / self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def to_x0(self, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
        """A denoiser's output as an x_0 estimate, whichever it predicts (``x0`` or ``epsilon``)."""
        if prediction_type == "x0":
            return prediction
        if prediction_type == "epsilon":
            return self.x0_from_eps(x_t, prediction, t)
        raise ConfigError(f"unknown prediction type {prediction_type!r}; valid choices: x0, epsilon")
