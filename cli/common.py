"""What every ``diffrec`` command shares: the Typer apps, consoles, error handling, data options.

Every user error (unknown part, bad data, missing file, an OS refusal, diverging loss, an
existing output) ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import pathlib
import re
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import typer
from typer.core import TyperCommand
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from diffrec.errors import DiffrecError
from diffrec.presets import recipe_names
from diffrec.registry import load_builtin_parts, registry

F = TypeVar("F", bound=Callable[..., Any])

RECIPE_HELP = f"Training recipe: {recipe_names()} (`diffrec reproduce --list-presets` prints what each sets)."

app = typer.Typer(
    name="diffrec",
    help="Diffusion models for sequential recommendation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect and prepare datasets.", no_args_is_help=True)
bench_app = typer.Typer(help="Microbenchmarks.", no_args_is_help=True)
#: the sections of ``diffrec --help``
MODEL_PANEL, STUDY_PANEL, PARTS_PANEL = "Train and use a model", "Studies", "Parts, data and kernels"
app.add_typer(data_app, name="data", rich_help_panel=PARTS_PANEL)
app.add_typer(bench_app, name="bench", rich_help_panel=PARTS_PANEL)


def _print_version(value: bool) -> None:
    if value:
        from diffrec import __version__

        console.print(f"diffrec {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print diffrec's version and exit."),
) -> None:
    """Diffusion models for sequential recommendation."""

#: under torchrun only rank 0 prints results and progress (every rank still reports its errors)
console = Console(quiet=int(os.environ.get("RANK", "0")) > 0)
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as one line on stderr (markup-free: ``[model]`` stays as written)."""
    text = " ".join(message.split()) if "\n" in message else message
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _os_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or type(exc).__name__
    return f"{where}: {reason}" if where else reason


def handle_errors(func: F) -> F:
    """Turn user-facing errors into one line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DiffrecError as exc:
            raise fail(str(exc)) from None
        except FileNotFoundError as exc:
            raise fail(f"file not found: {exc.filename or exc}") from None
        except OSError as exc:
            raise fail(_os_message(exc)) from None
        except FloatingPointError as exc:
            raise fail(str(exc)) from None
        except MemoryError:
            raise fail("out of memory (a smaller model, batch or dataset may fit)") from None
        except RuntimeError as exc:
            if "allocate" in str(exc) or "out of memory" in str(exc):
                raise fail(f"out of memory ({str(exc).splitlines()[0][:200]})") from None
            raise
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]


_CHOICES = re.compile(r"<choices of ([a-z_]+)>")
#: an option's help naming the models that train on sequence examples, filled in as ``choices`` is
SEQUENCE_MODELS = "<models taking sequence examples>"


def choices(kind: str) -> str:
    """An option's help naming the registered parts of ``kind``, filled in only when help is shown
    (by :class:`PartsHelp`), so that starting ``diffrec`` never imports the parts (and torch)."""
    return f"<choices of {kind}>"


def _expand_choices(text: str) -> str:
    def names(match: re.Match[str]) -> str:
        load_builtin_parts()
        return "Choices: " + ", ".join(registry(match.group(1)).names()) + " (plus parts registered by --plugin)."

    if SEQUENCE_MODELS in text:
        from diffrec.building import sequence_example_models

        hints = [getattr(registry("model").get(name), "sequence_examples_hint", "") for name in registry("model").names()]
        text = text.replace(SEQUENCE_MODELS, "; ".join([", ".join(sequence_example_models()), *filter(None, hints)]))
    return _CHOICES.sub(names, text)


class PartsHelp(TyperCommand):
    """A command whose option help lists registered parts (``choices``): the lists are read from the
    registry when the help is formatted, not when the command is built."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            help_text = getattr(param, "help", None)
            if help_text and (_CHOICES.search(help_text) or SEQUENCE_MODELS in help_text):
                param.help = _expand_choices(help_text)
        super().format_help(ctx, formatter)


def dump_json(obj: Any) -> str:
    """JSON for stdout; a non-finite number is an error, never ``NaN`` in the output."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        raise DiffrecError("the result holds a non-finite number; the model's weights may be damaged") from None


def print_metrics(title: str, metrics: dict[str, dict[str, float]]) -> None:
    splits = list(metrics)
    keys = list(next(iter(metrics.values())))
    if any(not math.isfinite(v) for m in metrics.values() for v in m.values()):
        raise DiffrecError("a metric is not a finite number; the model's weights may be damaged")
    console.print(title, highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("metric (%)")
    for split in splits:
        table.add_column(split, justify="right")
    for key in keys:
        table.add_row(key, *(f"{metrics[s][key]:.4f}" for s in splits))
    console.print(table)


# ------------------------------------------------------------ data options
#: CLI option -> DataConfig field, shared by every command that reads a dataset
DATA_OPTIONS: dict[str, str] = {
    "data_format": "format",
    "delimiter": "delimiter",
    "user_column": "user_column",
    "item_column": "item_column",
    "time_column": "time_column",
    "header": "header",
    "min_core": "min_core",
    "min_length": "min_length",
    "drop_short": "drop_short",
}

#: option name -> (type, Typer option) of the data options
_DATA_PARAMS: dict[str, tuple[type, Any]] = {
    "data_format": (str, typer.Option(None, "--data-format", help="Data format (default: by file name and content); see `diffrec list`.")),
    "delimiter": (str, typer.Option(None, help="Field delimiter of a log, e.g. '::' or ';' (default: the format's own).")),
    "user_column": (str, typer.Option(None, help="User column of a log: a header name or a 0-based position.")),
    "item_column": (str, typer.Option(None, help="Item column of a log: a header name or a 0-based position.")),
    "time_column": (str, typer.Option(None, help="Timestamp column of a log: a header name or a 0-based position.")),
    "header": (str, typer.Option(None, help="Whether a log's first row names its columns: auto (default), yes or no.")),
    "min_core": (int, typer.Option(None, help="k of the k-core filter applied to logs (5).")),
    "min_length": (int, typer.Option(None, help="Fewest interactions per user (3).")),
    "drop_short": (bool, typer.Option(None, "--drop-short/--no-drop-short", help="Drop users of a sequence file shorter than --min-length instead of refusing the file.")),
}


def with_data_options(func: F) -> F:
    """Give a command the data options (``--data-format``, ``--delimiter``, ...).

    The command receives them as one dict, ``data_options`` (option name -> value or None).
    """
    signature = inspect.signature(func, eval_str=True)
    kept = [p for name, p in signature.parameters.items() if name != "data_options"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[kind]) for name, (kind, option) in _DATA_PARAMS.items()]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name, None) for name in _DATA_PARAMS}
        return func(*args, data_options=values, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=kept + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in kept + extra}
    return wrapper  # type: ignore[return-value]


def data_config(path: Optional[str], values: dict[str, Any], base: Any = None):
    """A validated DataConfig from a path and the data options given on the command line."""
    from diffrec.config import DataConfig

    config = base if base is not None else DataConfig()
    config.path = path or config.path
    for option, field in DATA_OPTIONS.items():
        if values.get(option) is not None:
            setattr(config, field, values[option])
    config.validate()
    return config


def load_checkpoint(checkpoint: pathlib.Path, device: str, sets: list[str] = ()):
    """(config, model, dataset record, device) of a run directory, with ``--set`` assignments applied."""
    from diffrec.building import load_run_model, select_device

    dev = select_device(device)
    cfg, model, record = load_run_model(checkpoint, dev, sets)
    return cfg, model, record, dev


THREADS_HELP = "CPU threads (0 = torch's default)."


def use_threads(threads: int) -> None:
    """Set torch's CPU threads for an evaluation-only command (0 keeps torch's default)."""
    if threads < 0:
        raise DiffrecError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


SET_HELP = "KEY=VALUE changing the run's config before it is evaluated (repeatable), e.g. --set reverse_sampler.steps=4, --set eval.seed=3."
