"""What every diffusion recommender shares: a base class that a new model fills with two ideas.

A diffusion recommender learns p(e_target | history) by denoising: the target item's
embedding x_0 is noised to x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM Eq. 4), a
denoiser f(x_t, t, c) conditioned on the history predicts x_0 (or eps), and at inference
a reverse sampler walks from x_T ~ N(0, I) to x_0, which a rounding turns into item scores.

:class:`DiffusionRecommender` owns the shared machinery, all of it registry parts named in
the model's settings: the noise ``schedule`` and the :class:`GaussianDiffusion` it defines
(with the conversions between x_0 and eps predictions), the ``timestep_sampler``, the
``loss``, the ``reverse_sampler`` and the ``rounding``; the timestep sampler's learnt state
is checkpointed through ``nn.Module``'s extra-state hooks; and the RecBole-style contract
``calculate_loss`` / ``full_sort_predict`` / ``recommend``. A model supplies only:

- ``condition(batch)``: the history encoded into a condition c (any tensor or tuple);
- ``denoiser(x_t, t, c, batch, generator, unconditional)``: f(x_t, t, c), an x_0 or eps
  prediction as ``settings.prediction_type`` says (``unconditional`` selects the null
  condition of models with ``supports_guidance``, for classifier-free guidance). Training
  applies the configured loss to x0_hat (an eps prediction converted), except that an eps
  model with the ``mse`` loss trains DDPM's L_simple, MSE to the noise; the samplers always
  receive x_0 estimates;
- ``item_table()``: the (N + 1, d) item embeddings that give x_0 and score the rounding.

``target_x0``, ``training_losses`` or ``calculate_loss`` itself may be overridden (a model with
its own objective, PreferDiff's, does the last). A model whose condition is causal can also train on sequence
examples (a target at every position, as SASRec and BSARec train): it sets
``supports_sequence_examples`` and overrides ``training_pairs`` to give one condition per real
position with the item that follows it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch

from diffrec.config import ModelConfig
from diffrec.data.batching import Batch
from diffrec.errors import ConfigError
from diffrec.models.base import Recommender
from diffrec.params import PartRef, part_args, part_name, setting
from diffrec.registry import registry
from diffrec.schedules import GaussianDiffusion


@dataclasses.dataclass
class DiffusionSettings:
    """Settings every diffusion recommender has (the DiffuRec public code's defaults)."""

    schedule: PartRef = setting("trunc_lin", "noise schedule of the forward process", part="schedule")
    diffusion_steps: int = setting(32, "diffusion steps T")
    timestep_sampler: PartRef = setting("uniform", "how training draws the step t", part="timestep_sampler")
    reverse_sampler: PartRef = setting("ddpm", "how inference reverses the chain", part="reverse_sampler")
    rounding: PartRef = setting("inner_product", "how the final x_0 becomes item scores", part="rounding")
    prediction_type: Literal["x0", "epsilon"] = setting("x0", "what the denoiser predicts: x_0 or the noise eps")
    emb_init_std: float = setting(1.0, "std of the item-embedding init (the public code: nn.Embedding's N(0, 1))")

    def __post_init__(self) -> None:
        if self.diffusion_steps < 1:
            raise ConfigError(f"diffusion_steps must be >= 1, got {self.diffusion_steps}")
        if self.emb_init_std <= 0:
            raise ConfigError(f"emb_init_std must be > 0, got {self.emb_init_std}")


class DiffusionRecommender(Recommender):
    """The shared machinery of a diffusion recommender (see the module docstring)."""

    Settings: ClassVar[type] = DiffusionSettings
    #: whether ``denoiser(..., unconditional=True)`` exists (needed for classifier-free guidance)
    supports_guidance: ClassVar[bool] = False

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        s = self.settings
        self.diffusion = GaussianDiffusion(registry("schedule").build(s.schedule), s.diffusion_steps)
        self.loss_fn = registry("loss").build(config.loss, over_padding=config.ce_over_padding, backend=self.backend, config=config)
        self.rounding = registry("rounding").build(s.rounding, backend=self.backend, config=config)
        self.timestep_sampler = registry("timestep_sampler").build(s.timestep_sampler, num_steps=s.diffusion_steps)
        self.reverse_sampler = registry("reverse_sampler").build(s.reverse_sampler, config=config)

    @classmethod
    def check_settings(cls, settings: DiffusionSettings, config: ModelConfig) -> None:
        """Refuse guidance without an unconditional branch."""
        if part_args(settings.reverse_sampler).get("guidance", 0.0) and not cls.supports_guidance:
            raise ConfigError(f"model {cls.registry_name} has no unconditional branch; classifier-free guidance needs one (set guidance = 0)")

    @property
    def reverse_sampler(self) -> Any:
        return self._reverse_sampler

    @reverse_sampler.setter
    def reverse_sampler(self, sampler: Any) -> None:
        if getattr(sampler, "guidance", 0.0) and not self.supports_guidance:
            raise ConfigError(f"model {self.registry_name} has no unconditional branch; classifier-free guidance needs one (set guidance = 0)")
        self._reverse_sampler = sampler

    @property
    def backend(self) -> str | None:
        """Kernel backend: None lets each op choose (Triton for CUDA tensors)."""
        return None if self.config.kernel_backend == "auto" else self.config.kernel_backend

    # ------------------------------------------------------------ the model's part
    def condition(self, batch: Batch) -> Any:  # pragma: no cover
        raise NotImplementedError

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, condition: Any, batch: Batch, generator: torch.Generator | None = None, unconditional: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def training_pairs(self, batch: Batch) -> tuple[Any, torch.Tensor]:
        """The conditions a training batch trains and their target ids (n,): one per prefix example.
        A model with ``supports_sequence_examples`` gives one per real position of a sequence
        example (``batch.next_items``) instead."""
        return self.condition(batch), batch.target

    def target_x0(self, targets: torch.Tensor) -> torch.Tensor:
        """x_0 of the training targets (n,): their embeddings, (n, d)."""
        return self.item_table()[targets]

    def training_losses(self, x0_hat: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The configured loss of x0_hat (n, d) against the targets (n,): (n,), or () for a batch-mean loss."""
        return self.loss_fn(x0_hat, self.item_table(), targets)

    # ------------------------------------------------------------ shared
    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, condition: Any, batch: Batch, generator: torch.Generator | None = None, unconditional: bool = False) -> torch.Tensor:
        """The denoiser's prediction as an x_0 estimate, whatever it predicts: (B, d)."""
        prediction = self.denoiser(x_t, t, condition, batch, generator, unconditional)
        return self.diffusion.to_x0(prediction, x_t, t, self.settings.prediction_type)

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        """The configured loss of x0_hat; for an eps model with the ``mse`` loss, DDPM's L_simple (MSE to the noise, Ho et al. Eq. 14)."""
        c, targets = self.training_pairs(batch)  # n = B pairs, or one per real position of sequence examples
        x0 = self.target_x0(targets)  # (n, d)
        t, weights = self.timestep_sampler.sample(x0.shape[0], x0.device)  # (n,), (n,)
        noise = torch.randn_like(x0)
        x_t = self.diffusion.add_noise(x0, noise, t)  # (n, d), DDPM Eq. 4
        if self.settings.prediction_type == "epsilon" and part_name(self.config.loss) == "mse":
            losses = (self.denoiser(x_t, t, c, batch) - noise).pow(2).mean(-1)  # (n,)
        else:
            losses = self.training_losses(self.predict_x0(x_t, t, c, batch), targets)
        if losses.dim() == 0:
            return losses
        self.timestep_sampler.update(t, losses)
        return (losses * weights).mean()

    @torch.no_grad()
    def reverse(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run the reverse chain from x_T ~ N(0, I): (B, d)."""
        c = self.condition(batch)
        table = self.item_table()
        x_T = torch.randn((len(batch), table.shape[-1]), generator=generator, device=table.device, dtype=table.dtype)

        def denoise(x: torch.Tensor, t: torch.Tensor, unconditional: bool = False) -> torch.Tensor:
            return self.predict_x0(x, t, c, batch, generator, unconditional)

        return self.reverse_sampler.sample(denoise, self.diffusion, x_T, generator)

    @torch.no_grad()
    def full_sort_predict(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.rounding.scores(self.reverse(batch, generator), self.item_table())  # (B, N + 1)

    @torch.no_grad()
    def full_sort_queries(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        as_inner_product = getattr(self.rounding, "as_inner_product", None)
        if as_inner_product is None:
            return None
        return as_inner_product(self.reverse(batch, generator), self.item_table())

    @torch.no_grad()
    def recommend(self, batch: Batch, k: int, exclude: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rounding.topk(self.reverse(batch, generator), self.item_table(), k, exclude)

    # ------------------------------------------------------------ checkpointed state
    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """The timestep sampler's learnt state, saved with the weights."""
        return {f"timestep_sampler.{k}": v for k, v in self.timestep_sampler.state_dict().items()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "timestep_sampler."
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if own:
            self.timestep_sampler.load_state_dict(own)
