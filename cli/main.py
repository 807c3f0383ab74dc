"""The ``diffrec`` command line: train, evaluate, recommend, list parts, inspect data, benchmark kernels.

Every user error (unknown part, bad data, missing file, diverging loss, an
existing output directory) ends with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from diffrec.errors import DiffrecError
from diffrec.registry import KINDS, load_builtin_parts, load_plugin, registry

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="diffrec",
    help="Diffusion models for sequential recommendation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
bench_app = typer.Typer(help="Microbenchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


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
        except FloatingPointError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]


def choices(kind: str) -> str:
    load_builtin_parts()
    return "Choices: " + ", ".join(registry(kind).names()) + " (plus parts registered by --plugin)."


# --------------------------------------------------------------------------- train

#: CLI option -> (config section, field)
OVERRIDES: dict[str, tuple[str, str]] = {
    "model": ("model", "model"),
    "approximator": ("model", "approximator"),
    "schedule": ("model", "schedule"),
    "loss": ("model", "loss"),
    "rounding": ("model", "rounding"),
    "timestep_sampler": ("model", "timestep_sampler"),
    "reverse_sampler": ("model", "reverse_sampler"),
    "steps": ("model", "diffusion_steps"),
    "delta": ("model", "delta"),
    "max_len": ("model", "max_len"),
    "hidden_size": ("model", "hidden_size"),
    "num_blocks": ("model", "num_blocks"),
    "num_heads": ("model", "num_heads"),
    "dropout": ("model", "dropout"),
    "emb_dropout": ("model", "emb_dropout"),
    "attention_mask": ("model", "attention_mask"),
    "position_embedding": ("model", "position_embedding"),
    "x0_from_embedding": ("model", "x0_from_embedding"),
    "emb_init_std": ("model", "emb_init_std"),
    "ce_over_padding": ("model", "ce_over_padding"),
    "kernel_backend": ("model", "kernel_backend"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "weight_decay": ("train", "weight_decay"),
    "lr_step": ("train", "lr_step"),
    "lr_gamma": ("train", "lr_gamma"),
    "warmup_steps": ("train", "warmup_steps"),
    "grad_clip": ("train", "grad_clip"),
    "eval_every": ("train", "eval_every"),
    "patience": ("train", "patience"),
    "seed": ("train", "seed"),
    "bucketing": ("train", "bucketing"),
    "examples": ("train", "examples"),
    "device": ("train", "device"),
    "threads": ("train", "num_threads"),
    "precision": ("train", "precision"),
    "eval_protocol": ("eval", "protocol"),
    "eval_batch_size": ("eval", "batch_size"),
    "eval_seed": ("eval", "seed"),
    "exclude_history": ("eval", "exclude_history"),
    "data": ("data", "path"),
}


def build_config(config_file: Optional[pathlib.Path], plugins: list[str], overrides: dict[str, Any]):
    from diffrec.config import RunConfig

    config = RunConfig.load(config_file) if config_file is not None else RunConfig()
    for name, value in overrides.items():
        if value is None:
            continue
        section, field = OVERRIDES[name]
        setattr(getattr(config, section), field, value)
    for plugin in plugins:
        if plugin not in config.plugins:
            config.plugins.append(plugin)
    load_builtin_parts()
    for plugin in config.plugins:
        load_plugin(plugin)
    for kind in KINDS:
        registry(kind).get(getattr(config.model, kind))  # unknown names fail before anything is written
    return config.validate()


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings -> typed values (int, float, bool or str)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise DiffrecError(f"--option must look like KEY=VALUE, got {pair!r}")
        value: Any = raw.strip()
        if value.lower() in ("true", "false"):
            value = value.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(value)
                    break
                except ValueError:
                    continue
        out[key.strip()] = value
    return out


def print_metrics(title: str, metrics: dict[str, dict[str, float]]) -> None:
    splits = list(metrics)
    keys = list(next(iter(metrics.values())))
    console.print(title, highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("metric (%)")
    for split in splits:
        table.add_column(split, justify="right")
    for key in keys:
        table.add_row(key, *(f"{metrics[s][key]:.4f}" for s in splits))
    console.print(table)


@app.command()
@handle_errors
def train(
    data: Optional[str] = typer.Option(None, help="Dataset file or folder (sequences.txt, dataset.pkl, .csv/.tsv, .inter), or 'synthetic' (default)."),
    out: pathlib.Path = typer.Option(..., "--out", "-o", help="Run directory to create."),
    config: Optional[pathlib.Path] = typer.Option(None, "--config", help="Replay a config.toml (options given here override it)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    plugin: list[str] = typer.Option([], "--plugin", help="Module or .py file that registers extra parts (repeatable)."),
    option: list[str] = typer.Option([], "--option", help="Model-specific setting KEY=VALUE (repeatable), e.g. --option mask_prob=0.2."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    model: Optional[str] = typer.Option(None, help=choices("model")),
    approximator: Optional[str] = typer.Option(None, help=choices("approximator")),
    schedule: Optional[str] = typer.Option(None, help=choices("schedule")),
    loss: Optional[str] = typer.Option(None, help=choices("loss")),
    rounding: Optional[str] = typer.Option(None, help=choices("rounding")),
    timestep_sampler: Optional[str] = typer.Option(None, help=choices("timestep_sampler")),
    reverse_sampler: Optional[str] = typer.Option(None, help=choices("reverse_sampler")),
    steps: Optional[int] = typer.Option(None, help="Diffusion steps T (32)."),
    delta: Optional[float] = typer.Option(None, help="lambda ~ N(delta, delta) (0.001)."),
    max_len: Optional[int] = typer.Option(None, help="History length L (50; 200 for ML-1M)."),
    hidden_size: Optional[int] = typer.Option(None, help="Embedding size d (128)."),
    num_blocks: Optional[int] = typer.Option(None, help="Approximator blocks (4)."),
    num_heads: Optional[int] = typer.Option(None, help="Attention heads (4)."),
    dropout: Optional[float] = typer.Option(None, help="Approximator dropout (0.1)."),
    emb_dropout: Optional[float] = typer.Option(None, help="History-embedding dropout (0.3)."),
    attention_mask: Optional[str] = typer.Option(None, help="official (public code), key_padding or causal."),
    position_embedding: Optional[bool] = typer.Option(None, "--position-embedding/--no-position-embedding", help="Add position embeddings (off in the public code)."),
    x0_from_embedding: Optional[bool] = typer.Option(None, "--x0-from-embedding/--no-x0-from-embedding", help="The paper's extra q(x0|e) step (off in the public code)."),
    emb_init_std: Optional[float] = typer.Option(None, help="Item-embedding init std (1.0 as in the public code)."),
    ce_over_padding: Optional[bool] = typer.Option(None, "--ce-over-padding/--no-ce-over-padding", help="Include the padding id in the CE softmax (public code: yes)."),
    kernel_backend: Optional[str] = typer.Option(None, help="Kernels: torch, triton or auto."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (500)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (512)."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (1e-3)."),
    weight_decay: Optional[float] = typer.Option(None, help="Adam weight decay (0)."),
    lr_step: Optional[int] = typer.Option(None, help="StepLR step in epochs (100)."),
    lr_gamma: Optional[float] = typer.Option(None, help="StepLR factor (0.1)."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warm-up steps (0)."),
    grad_clip: Optional[float] = typer.Option(None, help="Gradient-norm clip (0 = off)."),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N epochs (20)."),
    patience: Optional[int] = typer.Option(None, help="Stop after N validations without improvement (5)."),
    seed: Optional[int] = typer.Option(None, help="Training seed (1997)."),
    bucketing: Optional[bool] = typer.Option(None, "--bucketing/--no-bucketing", help="Length buckets with trimmed padding (on)."),
    examples: Optional[str] = typer.Option(
        None, help="Training examples: prefix (every prefix, one target; default) or sequence (one per user, a target at every position: SASRec's training; sasrec, gru4rec, stosa; bert4rec cloze-masks the whole window)."
    ),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present), cpu, cuda, cuda:N."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (0 = torch default)."),
    precision: Optional[str] = typer.Option(None, help="fp32 (default) or bf16 (autocast training forward; evaluation stays fp32)."),
    eval_protocol: Optional[str] = typer.Option(None, help="correct (default) or official (public code)."),
    eval_batch_size: Optional[int] = typer.Option(None, help="Evaluation batch size (512)."),
    eval_seed: Optional[int] = typer.Option(None, help="Seed of the reverse process at evaluation (0)."),
    exclude_history: Optional[bool] = typer.Option(None, "--exclude-history/--include-history", help="Drop seen items from rankings (not the paper's protocol)."),
) -> None:
    """Train a model and test its best-validation checkpoint."""
    from diffrec.data import open_dataset
    from diffrec.trainer import Trainer

    params = {k: v for k, v in locals().items() if k in OVERRIDES}
    if resume and config is None and (out / "config.toml").is_file():
        config = out / "config.toml"
    cfg = build_config(config, plugin, params)
    cfg.model.options.update(parse_options(option))
    dataset = open_dataset(cfg.data)
    stats = dataset.stats()
    m = cfg.model
    parts = f"{m.approximator}, {m.schedule}, T={m.diffusion_steps}, {m.loss}, {m.rounding}" if m.model == "diffurec" else f"loss {m.loss}"

    def report(record: dict[str, Any]) -> None:
        line = f"epoch {record['epoch']:>4}  loss {record['loss']:.4f}  {record['seconds']:.1f}s  {record['examples_per_second']:.0f} ex/s"
        if "valid" in record:
            v = record["valid"]
            line += f"  valid HR@10 {v['HR@10']:.2f}  NDCG@10 {v['NDCG@10']:.2f}" if "HR@10" in v else ""
        console.print(line, highlight=False)

    trainer = Trainer(cfg, dataset, out, data_path=cfg.data.path, show_progress=not quiet and console.is_terminal, on_epoch=report)
    examples = f"{stats['train_examples']:,} training examples"
    if cfg.train.examples == "sequence":
        examples = f"{len(trainer.examples):,} sequence examples ({trainer.examples.num_targets:,} of the {stats['train_examples']:,} prefix pairs)"
    console.print(
        f"[bold]{dataset.name}[/]: {stats['users']:,} users, {stats['items']:,} items, {examples}; model {m.model} ({parts})",
        highlight=False,
        soft_wrap=True,
    )
    final = trainer.fit(resume=resume, force=force)
    print_metrics(f"{dataset.name}: best epoch {final['best_epoch']} ({final['protocol']} protocol)", {"valid": final["valid"], "test": final["test"]})
    console.print(f"run written to {out}", highlight=False)


# --------------------------------------------------------------------------- evaluate / recommend


def _load_checkpoint(checkpoint: pathlib.Path, device: str):
    from diffrec.trainer import load_run_model, select_device

    dev = select_device(device)
    cfg, model, record = load_run_model(checkpoint, dev)
    return cfg, model, record, dev


@app.command()
@handle_errors
def evaluate(
    checkpoint: pathlib.Path = typer.Option(..., help="A run directory written by `diffrec train`."),
    data: Optional[str] = typer.Option(None, help="Dataset (defaults to the run's own)."),
    split: str = typer.Option("test", help="test or valid."),
    eval_protocol: Optional[str] = typer.Option(None, help="correct or official (defaults to the run's)."),
    eval_seed: Optional[int] = typer.Option(None, help="Seed of the reverse process (defaults to the run's)."),
    reverse_sampler: Optional[str] = typer.Option(None, help="Evaluate with another reverse sampler (e.g. one_step); " + choices("reverse_sampler")),
    save_topk: Optional[pathlib.Path] = typer.Option(None, help="Write each user's top-K list to this TSV file."),
    k: int = typer.Option(20, "-k", help="List length for --save-topk."),
    force: bool = typer.Option(False, "--force", help="Overwrite --save-topk if it exists."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    output_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Re-evaluate a saved run (full-catalogue ranking) and optionally export top-K lists."""
    from diffrec.checkpoint import data_fingerprint
    from diffrec.config import DataConfig
    from diffrec.data import open_dataset
    from diffrec.evaluation import evaluate as run_eval

    if split not in ("test", "valid"):
        raise DiffrecError(f"unknown split {split!r}; valid choices: test, valid")
    if save_topk is not None and save_topk.exists() and not force:
        raise DiffrecError(f"{save_topk} exists (use --force to overwrite)")
    if k < 1:
        raise DiffrecError("-k must be >= 1")
    cfg, model, record, dev = _load_checkpoint(checkpoint, device)
    if reverse_sampler is not None:
        if not hasattr(model, "reverse_sampler"):
            raise DiffrecError(f"model {cfg.model.model} has no reverse sampler")
        model.reverse_sampler = registry("reverse_sampler").build_from(reverse_sampler, config=cfg.model)
    data_cfg = DataConfig(**{**cfg.data.__dict__, "path": data}) if data else cfg.data
    dataset = open_dataset(data_cfg)
    if dataset.num_items != record["num_items"]:
        raise DiffrecError(f"the data has {dataset.num_items} items but the model was trained on {record['num_items']}")
    if data and data_fingerprint(dataset) != record.get("fingerprint"):
        err_console.print("warning: the data differs from the run's training data", highlight=False)
    if eval_protocol is not None:
        cfg.eval.protocol = eval_protocol
    if eval_seed is not None:
        cfg.eval.seed = eval_seed
    if save_topk is not None and k > dataset.num_items:
        raise DiffrecError(f"-k {k} exceeds the {dataset.num_items} items")
    result = run_eval(model, dataset, split, cfg.eval, max_len=cfg.model.max_len, device=dev, save_topk=k if save_topk else 0, show_progress=console.is_terminal)
    if save_topk is not None:
        tmp = save_topk.with_name(save_topk.name + ".tmp")
        with tmp.open("w") as fh:
            fh.write("user\titems\n")
            for u, items in zip(result.users, result.topk):
                user = dataset.user_ids[u] if dataset.user_ids is not None else str(u)
                fh.write(user + "\t" + " ".join(_item_names(dataset, items)) + "\n")
        tmp.replace(save_topk)
    if output_json:
        print(json.dumps({"split": split, "protocol": cfg.eval.protocol, "metrics": result.metrics}, indent=2))
    else:
        print_metrics(f"{dataset.name} {split} ({cfg.eval.protocol} protocol, {result.num_users:,} users)", {split: result.metrics})
        if save_topk is not None:
            console.print(f"top-{k} lists written to {save_topk}", highlight=False)


def _item_names(dataset, items) -> list[str]:
    if dataset.item_ids is None:
        return [str(int(i)) for i in items]
    return [dataset.item_ids[int(i)] for i in items]


@app.command()
@handle_errors
def recommend(
    checkpoint: pathlib.Path = typer.Option(..., help="A run directory written by `diffrec train`."),
    history: str = typer.Option(..., help='Item ids in time order, e.g. "12 55 301" (internal ids 1..N).'),
    k: int = typer.Option(10, "-k", help="How many items."),
    seed: int = typer.Option(0, help="Seed of the reverse process."),
    include_history: bool = typer.Option(False, "--include-history", help="Allow items of the history in the list."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    output_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Rank the whole catalogue for one history and print the top K items."""
    import torch

    from diffrec.data import history_batch
    from diffrec.evaluation import make_generator

    cfg, model, record, dev = _load_checkpoint(checkpoint, device)
    n = int(record["num_items"])
    try:
        items = [int(tok) for tok in history.replace(",", " ").split()]
    except ValueError:
        raise DiffrecError(f"--history must be item ids separated by spaces, got {history!r}") from None
    if not items:
        raise DiffrecError("--history is empty")
    bad = [i for i in items if not 1 <= i <= n]
    if bad:
        raise DiffrecError(f"item id {bad[0]} is outside 1..{n}")
    allowed = n - (0 if include_history else len(set(items)))
    if not 1 <= k <= allowed:
        raise DiffrecError(f"-k must lie in 1..{allowed}")
    batch = history_batch(items, cfg.model.max_len).to(dev)
    exclude = torch.tensor([[0] if include_history else items], device=dev)  # (1, L)
    top_scores, top_ids = model.recommend(batch, k, exclude, make_generator(dev, seed))  # (1, k) each
    rows = [{"rank": r + 1, "item": int(i), "score": float(v)} for r, (v, i) in enumerate(zip(top_scores[0], top_ids[0]))]
    if output_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"top {k} for a history of {len(items)} items")
    table.add_column("rank", justify="right")
    table.add_column("item", justify="right")
    table.add_column("score", justify="right")
    for row in rows:
        table.add_row(str(row["rank"]), str(row["item"]), f"{row['score']:.4f}")
    console.print(table)


# --------------------------------------------------------------------------- list / data


@app.command("list")
@handle_errors
def list_cmd(plugin: list[str] = typer.Option([], "--plugin", help="Also import these plugin modules.")) -> None:
    """Print every registry and its entries."""
    load_builtin_parts()
    for p in plugin:
        load_plugin(p)
    table = Table(title="diffrec parts")
    table.add_column("registry")
    table.add_column("name")
    table.add_column("description")
    for kind in KINDS:
        for name in registry(kind).names():
            table.add_row(kind, name, registry(kind).describe(name))
    console.print(table)


@data_app.command("stats")
@handle_errors
def data_stats(
    path: str = typer.Argument(..., help="Dataset file or folder, or 'synthetic'."),
    output_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Users, items, actions, average length, sparsity."""
    from diffrec.config import DataConfig
    from diffrec.data import open_dataset

    dataset = open_dataset(DataConfig(path=path))
    stats = dataset.stats()
    if output_json:
        print(json.dumps({"name": dataset.name, **stats}, indent=2))
        return
    table = Table(title=f"{dataset.name}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    table.add_row("users", f"{stats['users']:,}")
    table.add_row("items", f"{stats['items']:,}")
    table.add_row("actions", f"{stats['actions']:,}")
    table.add_row("average length", f"{stats['avg_length']:.2f}")
    table.add_row("sparsity", f"{100 * stats['sparsity']:.4f}%")
    table.add_row("training examples", f"{stats['train_examples']:,}")
    console.print(table)


@app.command()
@handle_errors
def reproduce(
    dataset: str = typer.Option(..., help="beauty, toys or ml-1m."),
    models: str = typer.Option("diffurec,sasrec", help="Comma-separated model presets (see --list-presets)."),
    seeds: int = typer.Option(1, help="Number of seeds (1997, 1998, ...)."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="Run exactly this seed (repeatable; replaces --seeds). Seeds accumulate in the table across invocations."),
    recipe: str = typer.Option("paper", help="paper (the public code's schedule), fast (named convergence options), long (fast with 27 epochs before the decay), fast-2x (fast at learning rate 2e-3 after a 500-step warm-up), fast-b1024 (fast at the paper's batch of 1024) or sequence (SASRec's training: a target at every position; sasrec, gru4rec, stosa, and bert4rec's cloze over the whole window)."),
    data_root: pathlib.Path = typer.Option(pathlib.Path("../shared/datasets"), help="Folder holding beauty/, toys/, ml-1m/."),
    out: pathlib.Path = typer.Option(pathlib.Path("benchmarks/results"), help="Where runs and <dataset>.json go."),
    epochs: Optional[int] = typer.Option(None, help="Override the recipe's epoch budget."),
    eval_every: Optional[int] = typer.Option(None, help="Override the recipe's validation interval (epochs)."),
    patience: Optional[int] = typer.Option(None, help="Override the recipe's patience (validations)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda."),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
    precision: Optional[str] = typer.Option(None, help="fp32 or bf16."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    list_presets: bool = typer.Option(False, "--list-presets", help="Print the model presets and exit."),
    table_only: bool = typer.Option(False, "--table-only", help="Print the table of OUT/<dataset>.json and exit (trains nothing)."),
    reference: Optional[str] = typer.Option(None, help="Table entry the printed t-tests compare against, e.g. diffurec@fast (default: DiffuRec of each entry's recipe)."),
) -> None:
    """Train every model preset over seeds on a shipped dataset and tabulate against the paper."""
    from diffrec import reproduce as rep

    if list_presets:
        for name, preset in rep.PRESETS.items():
            console.print(f"{name:18s} {preset.description}", highlight=False)
        return
    if table_only:
        path = out / f"{dataset}.json"
        if not path.is_file():
            raise DiffrecError(f"{path} not found (run the reproduction first)")
        try:
            summary = json.loads(path.read_text())
            table = rep.markdown_table(summary, reference)
        except (ValueError, KeyError, TypeError) as err:
            raise DiffrecError(f"{path} is not a reproduction summary ({err})") from None
        print(table)
        return
    names = [m.strip() for m in models.split(",") if m.strip()]
    for name in names:
        if name not in rep.PRESETS:
            raise DiffrecError(f"unknown model preset {name!r}; valid choices: {', '.join(rep.PRESETS)}")
    if seeds < 1:
        raise DiffrecError("--seeds must be >= 1")
    seed_list = sorted(set(seed)) if seed else [1997 + i for i in range(seeds)]
    if not (data_root / dataset).exists():
        raise DiffrecError(f"dataset folder not found: {data_root / dataset}")
    load_builtin_parts()
    for name in names:
        registry("model").get(rep.PRESETS[name].model)
    if reference is not None:  # checked before training, not after
        earlier = out / f"{dataset}.json"
        known = {rep.entry_key(name, recipe) for name in names}
        if earlier.is_file():
            try:
                known |= set(json.loads(earlier.read_text()).get("models", {}))
            except (OSError, ValueError, AttributeError):
                pass  # reproduce() reports an unreadable summary
        if reference not in known:
            raise DiffrecError(f"--reference {reference!r} is neither in {earlier} nor trained by this command; valid choices: {', '.join(sorted(known))}")

    train_overrides = {
        "epochs": epochs,
        "eval_every": eval_every,
        "patience": patience,
        "device": device,
        "num_threads": threads,
        "precision": precision,
    }

    def apply(config) -> None:
        for key, value in train_overrides.items():
            if value is not None:
                setattr(config.train, key, value)

    summary = rep.reproduce(
        dataset,
        models=names,
        seeds=seed_list,
        data_root=data_root,
        out_dir=out,
        recipe=recipe,
        overrides=apply,
        show_progress=not quiet and console.is_terminal,
        log=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )
    print(rep.markdown_table(summary, reference))
    console.print(f"summary written to {out / (dataset + '.json')}", highlight=False)


@app.command()
@handle_errors
def plot(
    run: list[pathlib.Path] = typer.Option([], "--run", help="A run directory; repeat to overlay several runs."),
    summary: Optional[pathlib.Path] = typer.Option(None, "--summary", help="A reproduction summary (benchmarks/results/<dataset>.json) to plot instead of runs."),
    out: Optional[pathlib.Path] = typer.Option(None, help="PNG file (default with one run: RUN/curves.png; with --summary: beside it, <dataset>.png)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the PNG."),
) -> None:
    """Plot training loss and validation HR@10/NDCG@10 per epoch, of one run or several overlaid,
    or a reproduction summary's test HR@10/NDCG@10 per model against the paper's."""
    from diffrec.plots import plot_runs, plot_summary

    if bool(run) == (summary is not None):
        raise DiffrecError("give either --run (one or more) or --summary")
    if summary is not None:
        if not summary.is_file():
            raise DiffrecError(f"summary not found: {summary}")
        try:
            data = json.loads(summary.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise DiffrecError(f"{summary} is not JSON ({err})") from None
        target = out or summary.with_suffix(".png")
    else:
        if out is None and len(run) > 1:
            raise DiffrecError("--out is required when plotting several runs")
        target = out or run[0] / "curves.png"
    if target.exists() and not force:
        raise DiffrecError(f"{target} exists (use --force to overwrite)")
    written = plot_summary(data, target) if summary is not None else plot_runs(run, target)
    console.print(f"wrote {written}", highlight=False)


@bench_app.command("kernels")
@handle_errors
def bench_kernels(
    op: list[str] = typer.Option([], "--op", help="Ops to run (repeatable): noise_inject, inner_product_topk, linear_cross_entropy; default all."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    quick: bool = typer.Option(False, "--quick", help="One or two sizes per op, fewer repetitions."),
    output_json: Optional[pathlib.Path] = typer.Option(None, "--json", help="Also write the rows as JSON."),
) -> None:
    """Median time, peak memory, GB/s and TFLOP/s of the fused kernels against unfused PyTorch (and faiss on CPU)."""
    import torch

    from diffrec.kernels.bench import OPS, print_table, run_benchmarks

    unknown = [o for o in op if o not in OPS]
    if unknown:
        raise DiffrecError(f"unknown op {unknown[0]!r}; valid choices: {', '.join(OPS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DiffrecError("device 'cuda' was requested but CUDA is not available")
    if output_json is not None and output_json.exists():
        raise DiffrecError(f"{output_json} exists; choose another path")
    rows = run_benchmarks(list(op) or list(OPS), device, quick)
    print_table(rows, console)
    if output_json is not None:
        output_json.write_text(json.dumps(rows, indent=2))


def main() -> None:
    try:
        app()
    except DiffrecError as exc:  # errors raised while building the command (e.g. option help)
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
