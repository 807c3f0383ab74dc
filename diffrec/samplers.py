"""Timestep samplers (training) and reverse samplers (inference).

Timestep samplers draw the diffusion step of each training example
(paper Alg. 2, line 11) and may learn from the losses they produce.
Reverse samplers run the reverse chain from x_T ~ N(0, I) (paper Alg. 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

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

    def __init__(self, num_steps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
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

#: denoise(x_t (B, d), t (B,)) -> x0_hat (B, d)
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class ReverseSampler(Protocol):
    def sample(self, denoise: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...


@register("reverse_sampler", "ddpm")
class DDPMSampler:
    """All T ancestral steps: x_{t-1} = mu~_t(x_t, x0_hat) + sigma_t z, no noise at t = 0 (Alg. 1, Eq. 17).

    sigma_t follows the public code: log variance [beta~_1, beta_1, ..., beta_{T-1}].
    """

    def step(self, diffusion: GaussianDiffusion, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        mean = diffusion.posterior_mean(x0_hat, x_t, t)  # (B, d)
        if int(t[0]) == 0:
            return mean
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + diffusion.reverse_std(t, x_t) * noise

    def sample(self, denoise: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = x_T
        for i in reversed(range(diffusion.num_steps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            x = self.step(diffusion, denoise(x, t), x, t, generator)
        return x


@register("reverse_sampler", "one_step")
class OneStepSampler:
    """A single reverse step: x0_hat = f(history, x_T, T - 1) (a "does the chain matter?" control)."""

    def sample(self, denoise: Denoiser, diffusion: GaussianDiffusion, x_T: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        t = torch.full((x_T.shape[0],), diffusion.num_steps - 1, dtype=torch.long, device=x_T.device)
        return denoise(x_T, t)
