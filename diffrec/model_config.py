"""The ``[model]`` section of a run config: what every model shares, and the model's own settings.

Every model has an architecture size (``hidden_size``, ``num_blocks``, ``num_heads``,
``max_len``), dropouts, a training ``loss`` (a part reference) and a kernel backend; those
are :class:`ModelConfig`'s fields. Everything else is a *setting* that the model declares
itself, as a dataclass (``Recommender.Settings``): DiffuRec's ``delta``, ``schedule`` or
``reverse_sampler``, BERT4Rec's ``mask_prob``, BSARec's ``c``. A run config writes both flat
under ``[model]``, a part with parameters as its own table::

    [model]
    model = "diffurec"
    hidden_size = 128
    delta = 0.001

    [model.reverse_sampler]
    name = "ddim"
    steps = 4

:meth:`ModelConfig.validate` checks the settings against the model's declaration (an unknown
key is refused for every model) and completes them with its defaults. Configs written before
settings were declared per model held every DiffuRec field for every model and a baseline's
settings under ``[model.options]``; those still load: the former fields that a model does not
declare had no effect on it and are dropped.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from diffrec.errors import ConfigError, DiffrecError
from diffrec.params import PartRef, check_part_ref, check_values

#: the fields of the former flat ModelConfig that are now settings of the models that use them, with their defaults
LEGACY_FIELDS: dict[str, Any] = {
    "approximator": "transformer",
    "schedule": "trunc_lin",
    "rounding": "inner_product",
    "timestep_sampler": "uniform",
    "reverse_sampler": "ddpm",
    "diffusion_steps": 32,
    "delta": 0.001,
    "attention_mask": "official",
    "position_embedding": False,
    "x0_from_embedding": False,
    "emb_init_std": 1.0,
}
KERNEL_BACKENDS = ("auto", "torch", "triton")


@dataclass(init=False)
class ModelConfig:
    """The model's name, the architecture every model shares, and the model's own ``settings``."""

    model: str = "diffurec"
    #: embedding size d
    hidden_size: int = 128
    #: encoder blocks (approximator blocks for DiffuRec)
    num_blocks: int = 4
    num_heads: int = 4
    #: dropout inside the network
    dropout: float = 0.1
    #: dropout on the input embeddings
    emb_dropout: float = 0.3
    #: history length L (50; 200 for ML-1M)
    max_len: int = 50
    #: the training loss (a ``loss`` part reference); "" = the model's own (``default_loss``)
    loss: PartRef = ""
    #: the public code's softmax covers all N + 1 ids, padding included
    ce_over_padding: bool = True
    #: kernel backend for noise injection / rounding / fused CE: "auto", "torch" or "triton"
    kernel_backend: str = "torch"
    #: the model's own settings (declared by the model; see the module docstring)
    settings: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        model: str = "diffurec",
        hidden_size: int = 128,
        num_blocks: int = 4,
        num_heads: int = 4,
        dropout: float = 0.1,
        emb_dropout: float = 0.3,
        max_len: int = 50,
        loss: PartRef = "",
        ce_over_padding: bool = True,
        kernel_backend: str = "torch",
        settings: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        **more: Any,
    ) -> None:
        """Settings may be given as ``settings=``, as ``options=`` (the former name) or as keywords."""
        values = dict(model=model, hidden_size=hidden_size, num_blocks=num_blocks, num_heads=num_heads, dropout=dropout)
        values.update(emb_dropout=emb_dropout, max_len=max_len, loss=loss, ce_over_padding=ce_over_padding, kernel_backend=kernel_backend)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "settings", {**(options or {}), **(settings or {}), **more})
        #: former fields read from a config file, which the model may not declare (they had no effect on it)
        object.__setattr__(self, "_legacy", set())

    # ----------------------------------------------------------- settings
    def __getattr__(self, name: str) -> Any:
        """A setting of the model: its value, or the model's declared default."""
        if name.startswith("_") or name == "settings":
            raise AttributeError(name)
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        declared = self.declared()
        if name in declared:
            return declared[name].default
        raise AttributeError(f"{name!r} is not a setting of model {self.__dict__.get('model')!r} (its settings: {', '.join(declared) or 'none'})")

    def __setattr__(self, name: str, value: Any) -> None:
        """A shared field, or a setting of the model (``options``, the former name, merges several)."""
        if name in _FIELDS:
            object.__setattr__(self, name, value)
        elif name == "options":
            self.settings.update(value)
            self._legacy.difference_update(value)
        else:
            self.settings[name] = value
            self._legacy.discard(name)

    @property
    def options(self) -> dict[str, Any]:
        """The former name of :attr:`settings`."""
        return self.settings

    def model_class(self) -> type:
        from diffrec.registry import load_builtin_parts, registry

        load_builtin_parts()
        return registry("model").get(self.model)

    def declared(self) -> dict[str, Any]:
        """The settings the model declares (name -> Param); empty for an unknown model."""
        try:
            cls = self.model_class()
        except DiffrecError:
            return {}
        declare = getattr(cls, "settings_params", None)
        return declare() if callable(declare) else {}

    def model_settings(self) -> Any:
        """The model's settings dataclass, filled from this config (validated)."""
        self.validate()
        return self.model_class().Settings(**self.settings)

    # --------------------------------------------------------- validation
    def validate(self) -> None:
        """Check the shared fields and the model's settings; complete the settings with defaults."""
        from diffrec.registry import registry

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise DiffrecError(f"[model] {f.name} must be a finite number, got {value}")
        for name in ("hidden_size", "num_blocks", "num_heads", "max_len"):
            if getattr(self, name) < 1:
                raise DiffrecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise DiffrecError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        for name in ("dropout", "emb_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise DiffrecError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise DiffrecError(f"unknown kernel backend {self.kernel_backend!r}; valid choices: {', '.join(KERNEL_BACKENDS)}")
        cls = self.model_class()
        if self.loss == "":
            object.__setattr__(self, "loss", getattr(cls, "default_loss", "ce"))
        registry("loss").check(check_part_ref(self.loss, "[model] loss"))
        declared = self.declared()
        given = {k: v for k, v in self.settings.items() if k in declared or not self._is_stale(k, v)}
        for key, value in given.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise DiffrecError(f"[model] {key} must be a finite number, got {value}")
        values = check_values(given, declared, f"model {self.model}", noun="setting")
        for name, param in declared.items():
            if param.part is not None and name in values:
                registry(param.part).check(values[name])
        complete = {name: values.get(name, param.default) for name, param in declared.items()}
        settings = cls.Settings(**complete)  # the settings' own range checks
        check = getattr(cls, "check_settings", None)
        if callable(check):
            check(settings, self)  # checks that need the model and the shared fields (a part it cannot use)
        object.__setattr__(self, "settings", complete)


    def _is_stale(self, key: str, value: Any) -> bool:
        """A former field the model does not declare: left at its default, or read from an old config file."""
        return key in LEGACY_FIELDS and (value == LEGACY_FIELDS[key] or key in self.__dict__.get("_legacy", ()))


_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))


def model_section(raw: dict[str, Any]) -> ModelConfig:
    """``[model]`` of a config file: shared fields typed, everything else a setting (checked by validate)."""
    if not isinstance(raw, dict):
        raise ConfigError("config section [model] must be a table")
    defaults = ModelConfig()
    values: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("options", "settings"):
            if not isinstance(value, dict):
                raise ConfigError(f"[model] {key} must be a table")
            settings.update(value)
        elif key == "loss":
            values[key] = check_part_ref(value, "[model] loss")
        elif key in _FIELDS:
            expected = type(getattr(defaults, key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif type(value) is not expected:
                raise ConfigError(f"[model] {key} must be {expected.__name__}, got {type(value).__name__}")
            values[key] = value
        else:
            settings[key] = value
    config = ModelConfig(**values, settings=settings)
    config._legacy.update(k for k in settings if k in LEGACY_FIELDS)
    return config


def flat_model_section(config: ModelConfig) -> dict[str, Any]:
    """``[model]`` as a config file writes it: the shared fields, then the settings, flat."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "settings"}
    out.update(config.settings)
    return out
