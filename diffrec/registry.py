"""One decorator-based registry for every interchangeable part.

Each kind of part (``schedule``, ``approximator``, ``loss``, ``rounding``,
``timestep_sampler``, ``reverse_sampler``, ``model``, and the dataset file formats,
``data_format``) has a :class:`Registry`.
Adding a part is one file plus one decorator::

    from diffrec import register

    @register("approximator", "my_lstm")
    class MyLSTM(Approximator):
        ...

A part declares its parameters as typed keyword-only constructor arguments
(:mod:`diffrec.params`); ``build`` takes a part reference (a name, or a table
``{"name": ..., **parameters}``) or an already built object, checks the
parameters against the declaration and passes the context the caller offers
(``num_steps=``, ``config=``, ...) to the arguments the factory names. An unknown
name raises :class:`UnknownPartError` listing the valid choices; an unknown
parameter or a value of the wrong type is a one-line error listing the valid ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from diffrec.errors import DiffrecError
from diffrec.params import Param, check_values, context_names, part_args, part_name, part_params

T = TypeVar("T")

#: The registries of model parts: each is a field of ``ModelConfig`` naming one entry.
MODEL_KINDS = (
    "model",
    "schedule",
    "approximator",
    "loss",
    "rounding",
    "timestep_sampler",
    "reverse_sampler",
)
#: Names of every registry, in the order ``diffrec list`` prints them.
KINDS = (*MODEL_KINDS, "data_format")


class UnknownPartError(DiffrecError, KeyError):
    """Raised for a name that no registry entry carries."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> factory table for one kind of part."""

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Callable[..., T]] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str | None = None, *, overwrite: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a class or factory function under ``name``."""

        def decorator(obj: Callable[..., T]) -> Callable[..., T]:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot infer a {self.kind} name for {obj!r}")
            key = key.lower()
            if key in self._entries and not overwrite and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is already registered (pass overwrite=True to replace it)")
            self._entries[key] = obj
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._docs[key] = doc[0] if doc else ""
            try:
                obj.registry_name = key  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self, name: str) -> str:
        return self._docs.get(name, "")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> Callable[..., T]:
        key = name.lower() if isinstance(name, str) else name
        try:
            return self._entries[key]
        except KeyError:
            valid = ", ".join(self.names()) or "(none registered)"
            raise UnknownPartError(f"unknown {self.kind} {name!r}; valid choices: {valid}") from None

    def params(self, name: str) -> dict[str, Param]:
        """The parameters ``name`` declares (its keyword-only constructor arguments)."""
        factory = self.get(name)
        declared = getattr(factory, "declared_params", None)
        return dict(declared()) if callable(declared) else part_params(factory)

    def check(self, spec: Any) -> dict[str, Any]:
        """The checked parameters of a part reference (an error for an unknown name or parameter)."""
        name = part_name(spec)
        return check_values(part_args(spec), self.params(name), f"{self.kind} {name}")

    def build(self, spec: Any, /, **context: Any) -> T:
        """Build a part from a reference (a name or ``{"name": ..., **params}``), or pass an object through.

        ``context`` holds what the caller can offer; each factory receives the entries that
        its positional-or-keyword arguments name (all of them if it takes ``**kwargs``).
        """
        if not (isinstance(spec, str) or (isinstance(spec, dict) and "name" in spec)):
            if self.base is not None and not isinstance(spec, self.base):
                raise DiffrecError(f"expected a {self.kind} name or a {self.base.__name__} instance, got {type(spec).__name__}")
            return spec
        values = self.check(spec)
        factory = self.get(part_name(spec))
        names, takes_all = context_names(factory)
        offered = context if takes_all else {k: v for k, v in context.items() if k in names}
        return factory(**offered, **values)

    #: the former name of :meth:`build`, which already passed only the context a factory accepts
    build_from = build

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


REGISTRIES: dict[str, Registry[Any]] = {kind: Registry(kind) for kind in KINDS}


def registry(kind: str) -> Registry[Any]:
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise UnknownPartError(f"unknown registry {kind!r}; valid choices: {', '.join(KINDS)}") from None


def register(kind: str, name: str | None = None, *, overwrite: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``@register("schedule", "cosine")``: add a part to the registry of ``kind``."""
    return registry(kind).register(name, overwrite=overwrite)


def list_parts() -> dict[str, list[str]]:
    """Every registry and its entries (built-in parts are imported first)."""
    load_builtin_parts()
    return {kind: REGISTRIES[kind].names() for kind in KINDS}


_BUILTIN_MODULES = (
    "diffrec.schedules",
    "diffrec.approximators",
    "diffrec.losses",
    "diffrec.sampled_losses",
    "diffrec.rounding",
    "diffrec.rounding_ann",
    "diffrec.samplers",
    "diffrec.models",
    "diffrec.data.formats",
)


_walked = False


def load_builtin_parts() -> None:
    """Import every built-in part: the modules above and every module of those that are packages,
    so that a new built-in part is one file with its decorator (no import to add elsewhere)."""
    global _walked
    for name in _BUILTIN_MODULES:
        module = importlib.import_module(name)
        if not _walked:
            import pkgutil

            for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{name}.{info.name}")
    _walked = True


def load_plugin(module: str) -> None:
    """Import a user module (dotted name or path to a ``.py`` file) so that its decorators register parts."""
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(module)
    try:
        if module.endswith(".py"):
            if not path.is_file():
                raise DiffrecError(f"plugin file not found: {module}")
            name = f"diffrec_plugin_{path.stem}"
            loaded = sys.modules.get(name)
            if loaded is not None and pathlib.Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
                return  # already imported: its parts are registered
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        else:
            importlib.import_module(module)
    except DiffrecError:
        raise
    except ModuleNotFoundError as exc:
        raise DiffrecError(f"cannot import plugin {module!r}: {exc}") from None
    except Exception as exc:  # a broken plugin is the user's input: one line, not a traceback
        raise DiffrecError(f"plugin {module!r} failed to import: {type(exc).__name__}: {exc}") from None
