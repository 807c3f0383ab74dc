"""Typed part parameters, per-model settings, ``--set``, the generated part table, and the samplers they configure."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from diffrec.catalog import markdown_table, parameters
from diffrec.config import RunConfig
from diffrec.errors import ConfigError, DiffrecError
from diffrec.overrides import apply_all, apply_override
from diffrec.registry import KINDS, list_parts, registry
from diffrec.samplers import DDIMSampler, DDPMSampler, OneStepSampler, guided, spaced_timesteps
from diffrec.schedules import GaussianDiffusion

PARTS = list_parts()
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def every_part():
    for kind in KINDS:
        for name in PARTS[kind]:
            yield pytest.param(kind, name, id=f"{kind}-{name}")


# ---------------------------------------------------------------- declarations
@pytest.mark.parametrize("kind,name", list(every_part()))
def test_every_parameter_is_typed_documented_and_defaulted(kind, name):
    for param in parameters(kind, name).values():
        assert param.help, f"{kind} {name}: {param.name} has no help"
        if param.part is not None:
            assert param.part in KINDS and registry(param.part).get(param.default if isinstance(param.default, str) else param.default["name"])
        elif param.type is float:
            assert isinstance(param.default, (int, float)) and not isinstance(param.default, bool)
        else:
            assert type(param.default) is param.type, (param, type(param.default))
        if param.choices is not None:
            assert param.default in param.choices


@pytest.mark.parametrize("kind,name", [p for p in every_part() if p.values[0] not in ("model", "data_format")])
def test_unknown_or_mistyped_parameters_are_one_line_errors(kind, name):
    declared = registry(kind).params(name)
    with pytest.raises(ConfigError) as info:
        registry(kind).check({"name": name, "no_such_parameter": 1})
    message = str(info.value)
    assert "\n" not in message and "no_such_parameter" in message
    for param in declared:
        assert param in message, "the valid parameters are listed"
    for param in declared.values():
        wrong = "a string" if param.type is not str else 3
        with pytest.raises(ConfigError, match=f"{param.name} must be"):
            registry(kind).check({"name": name, param.name: wrong})


def test_parameters_reach_the_part():
    sampler = registry("reverse_sampler").build({"name": "ddim", "steps": 4, "eta": 1})
    assert (sampler.steps, sampler.eta) == (4, 1.0) and isinstance(sampler.eta, float)
    assert registry("schedule").build({"name": "cosine", "s": 0.02}).s == 0.02
    assert registry("timestep_sampler").build({"name": "loss_aware", "history": 3}, num_steps=5).history == 3
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        registry("reverse_sampler").build({"name": "ddim", "steps": 0})


def test_a_part_table_round_trips_through_a_config_file(tmp_path):
    config = RunConfig()
    config.model.reverse_sampler = {"name": "ddim", "steps": 4}
    config.validate()
    config.save(tmp_path / "c.toml")
    text = (tmp_path / "c.toml").read_text()
    assert '[model.reverse_sampler]\nname = "ddim"\nsteps = 4' in text
    loaded = RunConfig.load(tmp_path / "c.toml").validate()
    assert loaded == config


# ----------------------------------------------------------------- settings
def test_every_model_refuses_unknown_settings():
    for name in PARTS["model"]:
        config = RunConfig()
        apply_override(config, "model", name)
        config.model.settings["no_such_setting"] = 1
        with pytest.raises(ConfigError, match=f"unknown setting\\(s\\) no_such_setting for model {name}"):
            config.validate()


def test_settings_are_completed_with_their_defaults_and_checked():
    config = RunConfig()
    apply_override(config, "model", "bert4rec")
    config.validate()
    assert config.model.settings == {"objective": "native", "mask_prob": 0.2}
    apply_override(config, "mask_prob", "0.4")
    assert config.validate().model.settings["mask_prob"] == 0.4
    with pytest.raises(DiffrecError, match="mask_prob must lie in"):
        apply_all(config, ["mask_prob=1.5"])
    with pytest.raises(ConfigError, match="approximator"):  # a DiffuRec setting given to another model
        apply_all(RunConfig(model=type(config.model)(model="sasrec", approximator="gru")), [])


# --------------------------------------------------------------------- --set
def test_set_resolves_sections_parts_and_parameters():
    config = RunConfig()
    apply_all(config, ["reverse_sampler=ddim", "reverse_sampler.steps=4", "lr=2e-3", "eval.seed=5", "model.hidden_size=64", "bucketing=false", "eval.ks=5,10"])
    assert config.model.reverse_sampler == {"name": "ddim", "steps": 4}
    assert (config.train.lr, config.eval.seed, config.model.hidden_size, config.train.bucketing, config.eval.ks) == (2e-3, 5, 64, False, [5, 10])
    apply_all(config, ["reverse_sampler=ddpm"])  # a new part starts from its defaults
    assert config.model.reverse_sampler == "ddpm"


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("seed=3", "seed is in train and eval; say which"),
        ("zzz=3", "unknown key 'zzz' for --set; valid keys:"),
        ("reverse_sampler.stepz=4", "unknown parameter 'stepz' for reverse_sampler ddpm; valid parameters: steps"),
        ("delta.x=1", "delta is not a part"),
        ("lr=fast", "train.lr takes a float"),
        ("noequals", "--set takes KEY=VALUE"),
        ("reverse_sampler=nope", "unknown reverse_sampler 'nope'; valid choices"),
        ("reverse_sampler.guidance=1", "has no unconditional branch"),
    ],
)
def test_set_errors_are_one_line(assignment, message):
    with pytest.raises(DiffrecError) as info:
        apply_all(RunConfig(), [assignment])
    assert message in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------- README
def test_the_readme_part_table_is_the_registrys():
    text = README.read_text()
    assert markdown_table() in text, "the README's part table is stale: run `python -m diffrec.catalog README.md`"


# ----------------------------------------------------------------- samplers
def diffusion(T: int = 10) -> GaussianDiffusion:
    return GaussianDiffusion(registry("schedule").build("trunc_lin"), T)


def test_ddim_with_eta_one_and_every_step_has_the_ddpm_posterior():
    diff = diffusion()
    sampler = DDIMSampler(steps=diff.num_steps, eta=1.0)
    x_t, x0 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    for t in range(1, diff.num_steps):
        mean, sigma = sampler.update(diff, x0, x_t, t, t - 1)
        tt = torch.full((6,), t)
        assert torch.allclose(mean, diff.posterior_mean(x0, x_t, tt), atol=1e-10)
        assert float(sigma) ** 2 == pytest.approx(diff.posterior_variance[t], rel=1e-10)


def test_ddim_with_eta_zero_is_deterministic_given_x_T():
    diff = diffusion()
    x_T = torch.randn(4, 3)

    def denoise(x, t):
        return torch.tanh(x) * 0.5

    a = DDIMSampler(steps=5).sample(denoise, diff, x_T, torch.Generator().manual_seed(1))
    b = DDIMSampler(steps=5).sample(denoise, diff, x_T, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = DDIMSampler(steps=5, eta=1.0).sample(denoise, diff, x_T, torch.Generator().manual_seed(1))
    d = DDIMSampler(steps=5, eta=1.0).sample(denoise, diff, x_T, torch.Generator().manual_seed(2))
    assert not torch.equal(c, d)


def test_one_step_is_ddim_with_one_step_and_steps_are_spaced():
    diff = diffusion(12)
    x_T = torch.randn(4, 3)
    seen = []

    def denoise(x, t):
        seen.append(int(t[0]))
        return x * 0.3

    assert torch.equal(OneStepSampler().sample(denoise, diff, x_T, None), x_T * 0.3) and seen == [11]
    assert spaced_timesteps(12, 1) == [11] and spaced_timesteps(12, 2) == [11, 0]
    assert spaced_timesteps(12, 4) == [11, 7, 4, 0] and spaced_timesteps(12, 50) == list(range(11, -1, -1))


def test_strided_ddpm_runs_the_respaced_process_and_all_steps_is_the_full_chain():
    diff = diffusion(12)
    kept = sorted(spaced_timesteps(12, 4))
    respaced = GaussianDiffusion.respaced(diff, kept)
    assert np.allclose(respaced.alphas_cumprod, diff.alphas_cumprod[kept])
    x_T = torch.randn(3, 4)
    seen = []

    def denoise(x, t):
        seen.append(int(t[0]))
        return torch.tanh(x)

    full = DDPMSampler().sample(denoise, diff, x_T, torch.Generator().manual_seed(0))
    assert torch.equal(DDPMSampler(steps=12).sample(denoise, diff, x_T, torch.Generator().manual_seed(0)), full)
    seen.clear()
    DDPMSampler(steps=4).sample(denoise, diff, x_T, torch.Generator().manual_seed(0))
    assert seen == kept[::-1], "the denoiser sees the original timesteps"


def test_prediction_types_convert_both_ways():
    diff = diffusion()
    x0, eps = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    t = torch.randint(0, 10, (5,))
    x_t = diff.add_noise(x0, eps, t)
    assert torch.allclose(diff.x0_from_eps(x_t, eps, t), x0) and torch.allclose(diff.eps_from_x0(x_t, x0, t), eps)
    assert torch.equal(diff.to_x0(x0, x_t, t, "x0"), x0)
    with pytest.raises(ConfigError, match="unknown prediction type"):
        diff.to_x0(x0, x_t, t, "v")


def test_guidance_mixes_the_conditional_and_unconditional_predictions():
    def denoise(x, t, unconditional=False):
        return x * (0.0 if unconditional else 1.0) + 1.0

    x = torch.ones(2, 3)
    assert torch.equal(guided(denoise, 0.0)(x, None), denoise(x, None))
    assert torch.allclose(guided(denoise, 2.0)(x, None), 3.0 * (x + 1.0) - 2.0 * torch.ones_like(x))
