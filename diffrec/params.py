"""Typed parameters: what a part or a model can be given, checked before anything is built.

A registered part declares its parameters as keyword-only arguments of its constructor,
each with a type, a default and a one-line help::

    @register("reverse_sampler", "ddim")
    class DDIMSampler:
        def __init__(self, *, steps: Annotated[int, "reverse steps, at most T"] = 8,
                     eta: Annotated[float, "0 = deterministic, 1 = DDPM's variance"] = 0.0) -> None: ...

Its other (positional-or-keyword) arguments are *context* that the model supplies (the
number of diffusion steps, the model config), never set by a user. A model declares its
own settings as a dataclass whose fields carry their help in ``metadata`` (see
:func:`setting`). Both become :class:`Param` lists: ``diffrec list --params``, the
README's part table, ``--set`` and the config checks all read them.

In a config a part is named by a *part reference*: its name (``"ddim"``), or a table with
its name and parameters (``{"name": "ddim", "steps": 4}``); a bare name means every
parameter at its default.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from diffrec.errors import ConfigError

#: a part reference in a config: a name, or a table {"name": ..., **parameters}
PartRef = Union[str, dict]


@dataclass(frozen=True)
class Param:
    """One declared parameter: its name, type, default, help, allowed values and part kind."""

    name: str
    type: type
    default: Any
    help: str = ""
    #: the allowed values of a str parameter with a closed set (a ``Literal``)
    choices: tuple[Any, ...] | None = None
    #: the registry kind of a setting that names a part (its value is a part reference)
    part: str | None = None

    def describe(self) -> str:
        kind = f"{self.part} part" if self.part else self.type.__name__
        if self.choices:
            kind += " in " + "|".join(map(str, self.choices))
        return f"{self.name}: {kind} = {self.default!r}"


def setting(default: Any, help: str, *, part: str | None = None) -> Any:
    """A field of a model's settings dataclass with its help (and, for a part, its kind)."""
    metadata = {"help": help, "part": part}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _unwrap(annotation: Any) -> tuple[Any, str, tuple[Any, ...] | None]:
    """(base type, help, choices) of an annotation such as ``Annotated[Literal["a", "b"], "help"]``."""
    help_text = ""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        help_text = next((e for e in extras if isinstance(e, str)), "")
    choices = None
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        annotation = type(choices[0])
    return annotation, help_text, choices


def _constructor(factory: Callable[..., Any]) -> Callable[..., Any] | None:
    """What builds the part: a class's own ``__init__`` (None when it has none), or the function."""
    if not inspect.isclass(factory):
        return factory
    return None if factory.__init__ is object.__init__ else factory.__init__  # type: ignore[misc]


def part_params(factory: Callable[..., Any]) -> dict[str, Param]:
    """The user parameters of a part: the keyword-only arguments of its constructor."""
    target = _constructor(factory)
    if target is None:
        return {}
    try:
        signature = inspect.signature(target)
        hints = typing.get_type_hints(target, include_extras=True)
    except (TypeError, ValueError, NameError):
        return {}
    params: dict[str, Param] = {}
    for p in signature.parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{factory!r}: keyword-only parameter {p.name!r} needs a default")
        base, help_text, choices = _unwrap(hints.get(p.name, type(p.default)))
        params[p.name] = Param(p.name, base if isinstance(base, type) else type(p.default), p.default, help_text, choices)
    return params


def context_names(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    """The context arguments a part accepts (positional-or-keyword), and whether it takes ``**kwargs``."""
    target = _constructor(factory)
    if target is None:
        return set(), False
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name != "self"}
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def settings_params(cls: type) -> dict[str, Param]:
    """The settings a model declares: the fields of its settings dataclass."""
    hints = typing.get_type_hints(cls, include_extras=True)
    params: dict[str, Param] = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        base, help_text, choices = _unwrap(hints.get(f.name, type(default)))
        part = f.metadata.get("part")
        kind = str if part else base if isinstance(base, type) else type(default)
        params[f.name] = Param(f.name, kind, default, f.metadata.get("help", help_text), choices, part)
    return params


# ------------------------------------------------------------------ values
def coerce(param: Param, value: Any, where: str) -> Any:
    """``value`` checked (and widened: an int for a float) against ``param``; a one-line error otherwise."""
    if param.part is not None:
        return check_part_ref(value, f"{where}{param.name}")
    expected = param.type
    ok = (
        isinstance(value, bool)
        if expected is bool
        else (isinstance(value, int) and not isinstance(value, bool))
        if expected is int
        else (isinstance(value, (int, float)) and not isinstance(value, bool))
        if expected is float
        else isinstance(value, expected)
    )
    if not ok:
        raise ConfigError(f"{where}{param.name} must be {expected.__name__}, got {type(value).__name__} {value!r:.40}")
    if expected is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}{param.name} must be a finite number, got {value}")
    if param.choices is not None and value not in param.choices:
        raise ConfigError(f"{where}{param.name} must be one of {', '.join(map(str, param.choices))}, got {value!r}")
    return value


def check_values(given: Mapping[str, Any], declared: Mapping[str, Param], what: str, noun: str = "parameter") -> dict[str, Any]:
    """``given`` checked against ``declared``: unknown names and wrong types are one-line errors."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        valid = ", ".join(p.describe() for p in declared.values()) or "none"
        raise ConfigError(f"unknown {noun}(s) {', '.join(unknown)} for {what}; valid {noun}s: {valid}")
    return {name: coerce(declared[name], value, f"{what}: ") for name, value in given.items()}


def check_part_ref(value: Any, where: str) -> PartRef:
    """A part reference's shape: a name, or a table with a string ``name``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    raise ConfigError(f"{where} must be a part name or a table with a name, got {value!r:.60}")


def part_name(ref: PartRef) -> str:
    return ref if isinstance(ref, str) else ref["name"]


def part_args(ref: PartRef) -> dict[str, Any]:
    return {} if isinstance(ref, str) else {k: v for k, v in ref.items() if k != "name"}


def make_ref(name: str, args: Mapping[str, Any]) -> PartRef:
    """The canonical reference: the bare name when no parameter is set."""
    return {"name": name, **args} if args else name


def with_arg(ref: PartRef, key: str, value: Any) -> PartRef:
    return make_ref(part_name(ref), {**part_args(ref), key: value})
