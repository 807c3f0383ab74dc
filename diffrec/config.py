"""Typed configuration: every run is described by one :class:`RunConfig`.

Defaults reproduce the DiffuRec public code (reference notes); every deviation
from it is a named field. A run directory stores its config as TOML and
``diffrec train --config FILE`` replays it.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from diffrec.errors import DiffrecError
from diffrec.model_config import ModelConfig, flat_model_section, model_section

__all__ = ["DataConfig", "EvalConfig", "ModelConfig", "RunConfig", "TrainConfig"]

ATTENTION_MASKS = ("official", "key_padding", "causal")
EVAL_PROTOCOLS = ("correct", "official")
PRECISIONS = ("fp32", "bf16")
#: how a data file's header row is treated: detected, present, or absent
HEADERS = ("auto", "yes", "no")
#: "prefix": every prefix of a user's training part is one example with one target (the public code);
#: "sequence": one example per user, a target at every position (SASRec's, GRU4Rec's and STOSA's own training)
TRAIN_EXAMPLES = ("prefix", "sequence")


@dataclass
class TrainConfig:
    """Optimisation settings (public-code defaults; the paper says batch 1024)."""

    epochs: int = 500
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_step: int = 100
    lr_gamma: float = 0.1
    #: linear learning-rate warm-up over this many optimiser steps (0 = none, as in the public code)
    warmup_steps: int = 0
    grad_clip: float = 0.0
    eval_every: int = 20
    patience: int = 5
    seed: int = 1997
    #: batch examples of similar length and trim padding (function-preserving)
    bucketing: bool = True
    #: "prefix" (default) or "sequence" (see TRAIN_EXAMPLES); "sequence" needs a model that scores every position
    examples: str = "prefix"
    device: str = "auto"
    num_threads: int = 0
    #: "fp32" (the public code) or "bf16" (autocast of the training forward; evaluation stays fp32)
    precision: str = "fp32"
    #: a diffusion model's reverse sampler for the validation passes during training (which pick the
    #: best epoch and stop early), e.g. "one_step": cheaper where it ranks as the model's own sampler
    #: does. "" = the model's own. The run's final validation and test metrics use the model's own.
    valid_reverse_sampler: str = ""

    def validate(self) -> None:
        _check_finite(self, "train")
        if self.precision not in PRECISIONS:
            raise DiffrecError(f"unknown precision {self.precision!r}; valid choices: {', '.join(PRECISIONS)}")
        if self.examples not in TRAIN_EXAMPLES:
            raise DiffrecError(f"unknown training examples {self.examples!r}; valid choices: {', '.join(TRAIN_EXAMPLES)}")
        for name in ("epochs", "batch_size", "eval_every", "patience", "lr_step"):
            if getattr(self, name) < 1:
                raise DiffrecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise DiffrecError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip", "warmup_steps", "num_threads"):
            if getattr(self, name) < 0:
                raise DiffrecError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr_gamma <= 0:
            raise DiffrecError(f"lr_gamma must be > 0, got {self.lr_gamma}")


def step_lr(train: TrainConfig, epoch: int) -> float:
    """StepLR: the base rate times gamma for every lr_step epochs completed (0-based epoch)."""
    return train.lr * train.lr_gamma ** (epoch // train.lr_step)


@dataclass
class EvalConfig:
    """Evaluation protocol: leave-one-out, full-catalogue ranking."""

    #: "correct": padding never ranked, metrics averaged per user; "official": the public code's way
    protocol: str = "correct"
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 512
    #: seeds the reverse process so that evaluation is repeatable
    seed: int = 0
    #: drop each user's history items from the ranking (not the paper's protocol)
    exclude_history: bool = False
    #: rank by streaming over item tiles, never a users x items score matrix: "auto" (above
    #: STREAM_ABOVE items, for models that score by inner products), "always" or "never"
    stream: str = "auto"
    #: items per tile of the streamed ranking
    tile: int = 65536
    #: the reverse process's random numbers: "sequential" (one generator through every batch, as
    #: always) or "per_batch" (each batch seeded by its index: any sharding, e.g. torchrun, agrees)
    rng: str = "sequential"

    def validate(self) -> None:
        _check_finite(self, "eval")
        if self.stream not in ("auto", "always", "never"):
            raise DiffrecError(f"unknown stream setting {self.stream!r}; valid choices: auto, always, never")
        if self.tile < 1:
            raise DiffrecError(f"eval tile must be >= 1, got {self.tile}")
        if self.rng not in ("sequential", "per_batch"):
            raise DiffrecError(f"unknown eval rng {self.rng!r}; valid choices: sequential, per_batch")
        if self.protocol not in EVAL_PROTOCOLS:
            raise DiffrecError(f"unknown evaluation protocol {self.protocol!r}; valid choices: {', '.join(EVAL_PROTOCOLS)}")
        if not self.ks or min(self.ks) < 1:
            raise DiffrecError(f"metric cut-offs must be >= 1, got {self.ks}")
        if self.batch_size < 1:
            raise DiffrecError(f"eval batch_size must be >= 1, got {self.batch_size}")


@dataclass
class DataConfig:
    """Where the data comes from and how its file is read (see ``diffrec list``, data formats)."""

    path: str = "synthetic"
    #: a registered data format, or "auto" (chosen by the file's name and first bytes)
    format: str = "auto"
    #: field delimiter of a delimited log ("" = the format's own, or sniffed), e.g. "::" or ";"
    delimiter: str = ""
    #: user / item / timestamp column of a log: a header name or a 0-based position ("" = detected)
    user_column: str = ""
    item_column: str = ""
    time_column: str = ""
    #: whether a delimited log's first row names its columns: auto, yes or no
    header: str = "auto"
    #: k of the iterative k-core filter applied to logs (users and items with < k interactions go)
    min_core: int = 5
    #: fewest interactions a user needs to be kept (at least 3, for the leave-one-out split)
    min_length: int = 3
    #: for sequence files: drop users shorter than min_length instead of refusing the file
    drop_short: bool = False
    #: options of the built-in synthetic data (used when path == "synthetic")
    synthetic_users: int = 2000
    synthetic_items: int = 500
    synthetic_seed: int = 0

    def validate(self) -> None:
        if self.header not in HEADERS:
            raise DiffrecError(f"unknown header setting {self.header!r}; valid choices: {', '.join(HEADERS)}")
        if self.min_core < 0:
            raise DiffrecError(f"min_core must be >= 0, got {self.min_core}")
        if self.min_length < 3:
            raise DiffrecError(f"min_length must be >= 3 (a training item, a validation and a test target), got {self.min_length}")
        for name in ("synthetic_users", "synthetic_items"):
            if getattr(self, name) < 1:
                raise DiffrecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if "\n" in self.delimiter or "\r" in self.delimiter:
            raise DiffrecError("the delimiter cannot contain a line break")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    plugins: list[str] = field(default_factory=list)

    def validate(self) -> RunConfig:
        """Check every section (the model's settings against the model, with the config's plugins loaded)."""
        from diffrec.registry import load_builtin_parts, load_plugin

        load_builtin_parts()
        for plugin in self.plugins:
            load_plugin(plugin)
        self.model.validate()
        self.train.validate()
        self.eval.validate()
        self.data.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as a config file writes it (the model's settings flat under ``model``)."""
        out = asdict(self)
        out["model"] = flat_model_section(self.model)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        sections = {f.name: f for f in fields(cls)}
        unknown = set(raw) - set(sections)
        if unknown:
            raise DiffrecError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for name, f in sections.items():
            if name not in raw:
                continue
            value = raw[name]
            if name == "plugins":
                kwargs[name] = list(value)
                continue
            if name == "model":
                kwargs[name] = model_section(value)
                continue
            section_cls = f.default_factory  # type: ignore[misc]
            kwargs[name] = _section(section_cls, value, name)
        return cls(**kwargs)

    def save(self, path: str | pathlib.Path) -> None:
        import tomli_w  # only writing needs it: the library imports without it

        from diffrec.files import atomic_write

        atomic_write(pathlib.Path(path), tomli_w.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | pathlib.Path) -> RunConfig:
        """Read a config file; every error names the file."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise DiffrecError(f"config file not found: {path}")
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DiffrecError(f"{path}: not valid TOML ({exc})") from None
        except OSError as exc:
            raise DiffrecError(f"{path}: cannot read ({exc.strerror or exc})") from None
        try:
            return cls.from_dict(raw)
        except DiffrecError as exc:
            raise DiffrecError(f"{path}: {exc}") from None


def _check_finite(section: Any, name: str) -> None:
    """Refuse NaN and infinite values in every float field of a config section."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise DiffrecError(f"[{name}] {f.name} must be a finite number, got {value}")


def _section(section_cls: type, value: Any, name: str) -> Any:
    if not isinstance(value, dict):
        raise DiffrecError(f"config section [{name}] must be a table")
    known = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(value) - set(known)
    if unknown:
        raise DiffrecError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    defaults = section_cls()
    for key, v in value.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(v, int) and not isinstance(v, bool):
            value[key] = float(v)
        elif expected is not type(v) and not (expected in (list, dict) and isinstance(v, expected)):
            raise DiffrecError(f"[{name}] {key} must be {expected.__name__}, got {type(v).__name__}")
    return section_cls(**value)
