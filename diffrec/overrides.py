"""``--set KEY=VALUE``: change any config field, model setting or part parameter by name.

Keys name what they change:

- a field of a section: ``train.lr``, ``eval.seed``, ``data.min_core``, ``model.hidden_size``;
- a setting of the model: ``delta``, ``mask_prob``, ``model.c``;
- a part, or one of its parameters: ``reverse_sampler=ddim``, ``reverse_sampler.steps=4``,
  ``schedule.s=0.01``, ``loss=mse``.

The section may be left out where the name is unique (``lr``; but ``seed`` is in both
``train`` and ``eval``). Values are read as the declared type (``true``/``false`` for a
bool, ``5,10,20`` for a list); a part parameter is checked against the part's declaration.
Assignments apply in order, so ``reverse_sampler=ddim`` then ``reverse_sampler.steps=4``
works. Every error is one line that says what is valid.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from diffrec.config import RunConfig
from diffrec.errors import ConfigError
from diffrec.params import Param, part_name, with_arg

SECTIONS = ("model", "train", "eval", "data")


def parse_assignment(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, raw value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set takes KEY=VALUE (e.g. reverse_sampler.steps=4), got {text!r}")
    return key.strip(), raw.strip()


def _typed(raw: Any, kind: type, name: str) -> Any:
    """A command-line string as ``kind`` (values that are not strings pass through unchanged)."""
    if not isinstance(raw, str) or kind is str:
        return raw
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError
            return lowered in ("true", "yes", "1")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is list:
            return [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} takes a {kind.__name__}, got {raw!r}") from None
    return raw


def _fields(section: Any) -> dict[str, type]:
    return {f.name: type(getattr(section, f.name)) for f in dataclasses.fields(section) if f.name != "settings"}


def _model_keys(config: RunConfig) -> dict[str, Param | type]:
    keys: dict[str, Param | type] = dict(_fields(config.model))
    keys.update(config.model.declared())
    return keys


def keys_of(config: RunConfig) -> dict[str, dict[str, Any]]:
    """Every settable key, by section."""
    return {"model": _model_keys(config), "train": _fields(config.train), "eval": _fields(config.eval), "data": _fields(config.data)}


def apply_override(config: RunConfig, key: str, raw: Any) -> None:
    """Set ``key`` (see the module docstring) to ``raw`` in ``config``; the caller validates after."""
    parts = key.split(".")
    table = keys_of(config)
    if parts[0] in SECTIONS and len(parts) > 1:
        section, parts = parts[0], parts[1:]
    else:
        owners = [s for s in SECTIONS if parts[0] in table[s]]
        if not owners:
            valid = ", ".join(sorted({k for keys in table.values() for k in keys}))
            raise ConfigError(f"unknown key {key!r} for --set; valid keys: {valid} (and PART.PARAMETER for a part's parameter)")
        if len(owners) > 1:
            raise ConfigError(f"--set {key}: {parts[0]} is in {' and '.join(owners)}; say which ({', '.join(f'{s}.{parts[0]}' for s in owners)})")
        section = owners[0]
    name, rest = parts[0], parts[1:]
    if name not in table[section]:
        raise ConfigError(f"unknown key {name!r} in [{section}]; valid keys: {', '.join(table[section])}")
    target = getattr(config, section)
    spec = table[section][name]
    kind = _part_kind(name, spec)
    if rest:
        if kind is None or len(rest) > 1:
            raise ConfigError(f"--set {key}: {name} is not a part, so it has no parameters")
        _set_part_param(config, target, name, kind, rest[0], raw)
        return
    expected = spec.type if isinstance(spec, Param) else spec
    value = _typed(raw, str if kind is not None else expected, f"{section}.{name}")
    if section == "model" and name == "model" and value != config.model.model:
        config.model.model = value  # another model: keep only the settings it declares
        declared = config.model.declared()
        config.model.settings = {k: v for k, v in config.model.settings.items() if k in declared}
        return
    setattr(target, name, value)


def _part_kind(name: str, spec: Any) -> str | None:
    if isinstance(spec, Param):
        return spec.part
    return "loss" if name == "loss" else None


def _set_part_param(config: RunConfig, model: Any, name: str, kind: str, param: str, raw: Any) -> None:
    from diffrec.registry import load_builtin_parts, registry

    load_builtin_parts()
    ref = getattr(model, name)
    declared = registry(kind).params(part_name(ref))
    if param not in declared:
        valid = ", ".join(p.describe() for p in declared.values()) or "none"
        raise ConfigError(f"unknown parameter {param!r} for {kind} {part_name(ref)}; valid parameters: {valid}")
    setattr(model, name, with_arg(ref, param, _typed(raw, declared[param].type, f"{name}.{param}")))


def apply_all(config: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply ``KEY=VALUE`` strings in order, then validate."""
    for text in assignments:
        apply_override(config, *parse_assignment(text))
    return config.validate()
