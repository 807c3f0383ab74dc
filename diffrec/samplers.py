"""Timestep samplers (training) and reverse samplers (inference).

Timestep samplers draw the diffusion step of each training example
(paper Alg. 2, line 11) and may learn from the losses they produce.
Reverse samplers run the reverse chain from x_T ~ N(0, I) (paper Alg. 1):

- ``ddpm``: the ancestral chain (DDPM, Ho et al. 2020, Eq. 11), all T steps as the
  public code runs it, or ``steps`` of them on the respaced process (improved DDPM);
- ``ddim``: DDIM (Song et al. 2021, Eq. 12) on ``steps`` evenly spaced steps, with
  ``eta`` scaling the noise (0: deterministic given x_T; 1: the DDPM posterior's variance);
- ``one_step``: DDIM with one step, x0_hat = f(x_T, T - 1).

A sampler receives ``denoise(x_t, t) -> x0_hat`` (the model converts an epsilon
prediction to x_0 first). ``guidance`` w > 0 applies classifier-free guidance
(Ho & Salimans 2022): x0 = (1 + w) f(x_t, c) - w f(x_t, null), for models with an
unconditional branch (``denoise(..., unconditional=True)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Protocol, runtime_checkable

import numpy as np
import torch

from diffrec.errors import ConfigError
from diffrec.registry import register
from diffrec.schedules import GaussianDiffusion

# --------------------------------------------------------------------------- timestep samplers


@runtime_checkable
class TimestepSampler(Protocol):
    """``sample`` -> (t (B,) long, importance weights (B,)); ``update`` feeds back per-example losses."""

    def sample(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class _WeightedSampler:
    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def weights(self) -> torch.Tensor:
        return torch.ones(self.num_steps, dtype=torch.float64)

    def sample(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights()
        p = w / w.sum()  # (T,)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)  # (B,)
        importance = 1.0 / (self.num_steps * p[t])  # (B,)
        return t.to(device), importance.to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None


@register("timestep_sampler", "uniform")
class UniformSampler(_WeightedSampler):
    """t ~ U{0..T-1} with unit weights (the public code's effective behaviour)."""

    def __init__(self, num_steps: int) -> None:
        super().__init__(num_steps)

    def sample(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.num_steps, (batch_size,), generator=generator)
        return t.to(device), torch.ones(batch_size, device=device)


@register("timestep_sampler", "loss_aware")
class LossAwareSampler(_WeightedSampler):
    """Importance sampling by the loss second moment (improved DDPM): p_t ∝ sqrt(E[L_t^2]).

    Until every step has ``history`` recorded losses it samples uniformly; the
    loss is then reweighted by 1 / (T p_t) so that its expectation is unchanged.
    """

    def __init__(
        self,
        num_steps: int,
        *,
        history: Annotated[int, "recorded losses per step before importance sampling starts"] = 10,
        uniform_prob: Annotated[float, "probability mass kept uniform over the steps"] = 0.001,
    ) -> None:
        if history < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ConfigError(f"timestep_sampler loss_aware: history must be >= 1 and uniform_prob in [0, 1], got {history}, {uniform_prob}")
        super().__init__(num_steps)
        self.history = history
        self.uniform_prob = uniform_prob
        self.losses = torch.zeros(num_steps, history, dtype=torch.float64)  # ring buffer per step
        self.counts = torch.zeros(num_steps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.counts >= self.history).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return torch.ones(self.num_steps, dtype=torch.float64)
        w = self.losses.pow(2).mean(-1).sqrt()  # (T,)
        w = w / w.sum()
        return w * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_steps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        t = t.detach().cpu()
        losses = losses.detach().to("cpu", torch.float64)
        for step in t.unique().tolist():
            new = losses[t == step][-self.history :]
            n = new.numel()
            row = torch.cat([self.losses[step], new])[-self.history :] if n < self.history else new
            self.losses[step] = row
            self.counts[step] += n

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.losses.copy_(state["losses"])
        self.counts.copy_(state["counts"])


# --------------------------------------------------------------------------- reverse samplers

#: denoise(x_t (B, d), t (B,)) -> x0_hat (B, d); with unconditional=True the unconditional branch
Denoiser = Callable[..., torch.Tensor]


@runtime_checkable
class ReverseSampler(Protocol):
    #: classifier-free guidance weight w (0 = none)
    guidance: float

    def sample(self, denoise: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...


def guided(denoise: Denoiser, weight: float) -> Denoiser:
    """Classifier-free guidance: x0 = (1 + w) f(x_t, c) - w f(x_t, null); the denoiser itself when w = 0."""
    if weight == 0.0:
        return denoise
    return lambda x, t: (1.0 + weight) * denoise(x, t) - weight * denoise(x, t, unconditional=True)


def spaced_timesteps(num_steps: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly spread over 0..T-1, descending, always starting at T - 1."""
    if steps >= num_steps:
        return list(range(num_steps - 1, -1, -1))
    return sorted({int(round(v)) for v in np.linspace(num_steps - 1, 0, steps)}, reverse=True)


def _check_guidance(kind: str, guidance: float) -> float:
    if guidance < 0:
        raise ConfigError(f"reverse_sampler {kind}: guidance must be >= 0, got {guidance}")
    return guidance


def _timestep(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)


@register("reverse_sampler", "ddpm")
class DDPMSampler:
    """Ancestral steps x_{t-1} = mu~_t(x_t, x0_hat) + sigma_t z, no noise at t = 0 (Alg. 1, Eq. 17).

    sigma_t follows the public code: log variance [beta~_1, beta_1, ..., beta_{T-1}]. With
    ``steps`` < T the chain runs on the respaced process of that many steps.
    """

    def __init__(
        self,
        *,
        steps: Annotated[int, "reverse steps; 0 = all T (the public code's chain), fewer = the respaced process"] = 0,
        guidance: Annotated[float, "classifier-free guidance weight w (0 = none)"] = 0.0,
    ) -> None:
        if steps < 0:
            raise ConfigError(f"reverse_sampler ddpm: steps must be >= 0, got {steps}")
        self.steps = steps
        self.guidance = _check_guidance("ddpm", guidance)

    def step(self, diffusion: GaussianDiffusion, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        mean = diffusion.posterior_mean(x0_hat, x_t, t)  # (B, d)
        if int(t[0]) == 0:
            return mean
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + diffusion.reverse_std(t, x_t) * noise

    def sample(self, denoise: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        f = guided(denoise, self.guidance)
        process = diffusion
        if 0 < self.steps < diffusion.num_steps:
            process = GaussianDiffusion.respaced(diffusion, sorted(spaced_timesteps(diffusion.num_steps, self.steps)))
        x = x_T
        for i in reversed(range(process.num_steps)):
            t = _timestep(i, x)
            x = self.step(process, f(x, _timestep(int(process.timestep_map[i]), x)), x, t, generator)
        return x


@register("reverse_sampler", "ddim")
class DDIMSampler:
    """DDIM (Song et al. 2021) on a subset of the steps: deterministic with eta = 0, DDPM's variance with eta = 1.

    Eq. 12: x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s), on ``steps`` spaced timesteps.
    """

    def __init__(
        self,
        *,
        steps: Annotated[int, "reverse steps (at most T; more are capped at T)"] = 8,
        eta: Annotated[float, "noise scale: 0 = deterministic given x_T, 1 = the DDPM posterior's variance"] = 0.0,
        guidance: Annotated[float, "classifier-free guidance weight w (0 = none)"] = 0.0,
    ) -> None:
        if steps < 1:
            raise ConfigError(f"reverse_sampler ddim: steps must be >= 1, got {steps}")
        if eta < 0:
            raise ConfigError(f"reverse_sampler ddim: eta must be >= 0, got {eta}")
        self.steps = steps
        self.eta = eta
        self.guidance = _check_guidance("ddim", guidance)

    def update(self, diffusion: GaussianDiffusion, x0_hat: torch.Tensor, x_t: torch.Tensor, t: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of x_s given x_t and x0_hat (s < t)."""
        a_t, a_s = float(diffusion.alphas_cumprod[t]), float(diffusion.alphas_cumprod[s])
        eps = (x_t - a_t**0.5 * x0_hat) / (1.0 - a_t) ** 0.5  # (B, d)
        sigma = self.eta * ((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)) ** 0.5
        mean = a_s**0.5 * x0_hat + max(1.0 - a_s - sigma**2, 0.0) ** 0.5 * eps
        return mean, torch.full((), sigma, dtype=x_t.dtype, device=x_t.device)

    def sample(self, denoise: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        f = guided(denoise, self.guidance)
        steps = spaced_timesteps(diffusion.num_steps, self.steps)
        x = x_T
        for i, t in enumerate(steps):
            x0_hat = f(x, _timestep(t, x))
            if i == len(steps) - 1:
                return x0_hat
            mean, sigma = self.update(diffusion, x0_hat, x, t, steps[i + 1])
            if self.eta > 0:
                mean = mean + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean
        return x  # pragma: no cover (the loop always returns)


@register("reverse_sampler", "one_step")
class OneStepSampler(DDIMSampler):
    """A single reverse step, x0_hat = f(history, x_T, T - 1): DDIM with one step (a "does the chain matter?" control)."""

    def __init__(self, *, guidance: Annotated[float, "classifier-free guidance weight w (0 = none)"] = 0.0) -> None:
        super().__init__(steps=1, eta=0.0, guidance=guidance)
