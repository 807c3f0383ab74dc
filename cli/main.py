"""The ``diffrec`` command line: train and evaluate here, and the console script's entry point.

``recommend`` lives in :mod:`diffrec.cli.recommend`, ``list`` in :mod:`diffrec.cli.listing`,
the data commands in :mod:`diffrec.cli.data_cmds`, reproduction, plots and benchmarks in
:mod:`diffrec.cli.results`, ablations and analyses in :mod:`diffrec.cli.study`; importing this
module registers them all.
Every user error (unknown part, bad data, missing file, diverging loss, an existing
output directory) ends with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any, Optional

import typer

from diffrec.cli.common import (
    DATA_OPTIONS,
    MODEL_PANEL,
    SEQUENCE_MODELS,
    SET_HELP,
    THREADS_HELP,
    PartsHelp,
    app,
    choices,
    console,
    dump_json,
    err_console,
    fail,
    handle_errors,
    load_checkpoint,
    print_metrics,
    use_threads,
    with_data_options,
)
from diffrec.errors import DiffrecError
from diffrec.registry import load_builtin_parts, load_plugin, registry

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
    **{option: ("data", field) for option, field in DATA_OPTIONS.items()},
}


def build_config(config_file: Optional[pathlib.Path], plugins: list[str], overrides: dict[str, Any]):
    from diffrec.config import RunConfig

    config = RunConfig.load(config_file) if config_file is not None else RunConfig()
    for plugin in plugins:
        if plugin not in config.plugins:
            config.plugins.append(plugin)
    load_builtin_parts()
    for plugin in config.plugins:
        load_plugin(plugin)
    if config_file is not None:
        try:
            config.validate()  # the file's own errors name the file
        except DiffrecError as exc:
            raise DiffrecError(f"{config_file}: {exc}") from None
    for name, value in overrides.items():
        if value is None:
            continue
        section, field = OVERRIDES[name]
        if (section, field) == ("model", "model") and value != config.model.model:
            config.model.model = value  # another model: keep the settings it declares, drop the others
            declared = config.model.declared()
            config.model.settings = {k: v for k, v in config.model.settings.items() if k in declared}
            continue
        setattr(getattr(config, section), field, value)
    if config.data.format != "auto":
        registry("data_format").get(config.data.format)
    return config.validate()  # unknown parts, settings and values fail before anything is written


@app.command(cls=PartsHelp, rich_help_panel=MODEL_PANEL)
@handle_errors
@with_data_options
def train(
    data: Optional[str] = typer.Option(None, help="Dataset file or folder (sequences.txt, dataset.pkl, ratings.dat, .csv/.tsv, .inter, review .json[.gz]), or 'synthetic' (default)."),
    out: pathlib.Path = typer.Option(..., "--out", "-o", help="Run directory to create."),
    config: Optional[pathlib.Path] = typer.Option(None, "--config", help="Replay a config.toml (options given here override it)."),
    force: bool = typer.Option(False, "--force", help="Replace the diffrec run in --out (kept until the new run has finished)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    plugin: list[str] = typer.Option([], "--plugin", help="Module or .py file that registers extra parts (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for any config field, model setting or part parameter (repeatable), e.g. --set reverse_sampler.steps=4, --set mask_prob=0.2."),
    option: list[str] = typer.Option([], "--option", hidden=True, help="The former name of --set for a model setting."),
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
        None, help=f"Training examples: prefix (every prefix, one target; default) or sequence (one per user, a target at every position: SASRec's training; {SEQUENCE_MODELS})."
    ),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present), cpu, cuda, cuda:N."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (0 = torch default)."),
    precision: Optional[str] = typer.Option(None, help="fp32 (default) or bf16 (autocast training forward; evaluation stays fp32)."),
    eval_protocol: Optional[str] = typer.Option(None, help="correct (default) or official (public code)."),
    eval_batch_size: Optional[int] = typer.Option(None, help="Evaluation batch size (512)."),
    eval_seed: Optional[int] = typer.Option(None, help="Seed of the reverse process at evaluation (0)."),
    exclude_history: Optional[bool] = typer.Option(None, "--exclude-history/--include-history", help="Drop seen items from rankings (not the paper's protocol)."),
    data_options: Optional[dict] = None,
) -> None:
    """Train a model and test its best-validation checkpoint."""
    from diffrec.data import open_dataset
    from diffrec.trainer import Trainer

    params = {k: v for k, v in locals().items() if k in OVERRIDES}
    params.update(data_options or {})
    if resume and config is None:
        from diffrec.trainer import staging_dir

        pending = staging_dir(out)  # a replacement begun with --force resumes with its own config
        for candidate in (pending, out):
            if (candidate / "config.toml").is_file() and (candidate is out or (candidate / "last.safetensors").is_file()):
                config = candidate / "config.toml"
                break
    cfg = build_config(config, plugin, params)
    from diffrec.overrides import apply_all

    apply_all(cfg, [*(f"model.{pair}" if "=" in pair else pair for pair in option), *set_])
    dataset = open_dataset(cfg.data)
    stats = dataset.stats()
    m = cfg.model
    parts = describe_model(m)

    def report(record: dict[str, Any]) -> None:
        line = f"epoch {record['epoch']:>4}  loss {record['loss']:.4f}  {record['seconds']:.1f}s  {record['examples_per_second']:.0f} ex/s"
        if "valid" in record:
            v = record["valid"]
            line += f"  valid HR@10 {v['HR@10']:.2f}  NDCG@10 {v['NDCG@10']:.2f}" if "HR@10" in v else ""
        console.print(line, highlight=False)

    def log(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    trainer = Trainer(cfg, dataset, out, data_path=cfg.data.path, show_progress=not quiet and console.is_terminal, on_epoch=report, log=log)
    examples = f"{stats['train_examples']:,} training examples"
    if cfg.train.examples == "sequence":
        examples = f"{len(trainer.examples):,} sequence examples ({trainer.examples.num_targets:,} of the {stats['train_examples']:,} prefix pairs)"
    console.print(
        f"[bold]{dataset.name}[/]: {stats['users']:,} users, {stats['items']:,} items, {examples}; model {m.model} ({parts})",
        highlight=False,
        soft_wrap=True,
    )
    try:
        final = trainer.fit(resume=resume, force=force)
    except KeyboardInterrupt:
        if (out / "last.safetensors").is_file() or trainer.run.path != out:
            raise fail(f"interrupted; continue with: diffrec train --out {out} --resume", 130) from None
        raise
    print_metrics(f"{dataset.name}: best epoch {final['best_epoch']} ({final['protocol']} protocol)", {"valid": final["valid"], "test": final["test"]})
    console.print(f"run written to {out}", highlight=False)


def describe_model(m) -> str:
    """The parts a run trains with, for the line printed before training."""
    from diffrec.params import part_name

    names = [f"{key} {part_name(m.settings[key])}" for key in ("approximator", "schedule", "rounding", "reverse_sampler") if key in m.settings]
    if "diffusion_steps" in m.settings:
        names.insert(min(2, len(names)), f"T={m.settings['diffusion_steps']}")
    return ", ".join([*names, f"loss {part_name(m.loss)}"])


# --------------------------------------------------------------------------- evaluate


@app.command(cls=PartsHelp, rich_help_panel=MODEL_PANEL)
@handle_errors
def evaluate(
    checkpoint: pathlib.Path = typer.Option(..., help="A run directory written by `diffrec train`."),
    data: Optional[str] = typer.Option(None, help="Dataset (defaults to the run's own, found from any working directory)."),
    split: str = typer.Option("test", help="test or valid."),
    eval_protocol: Optional[str] = typer.Option(None, help="correct or official (defaults to the run's)."),
    eval_seed: Optional[int] = typer.Option(None, help="Seed of the reverse process (defaults to the run's)."),
    reverse_sampler: Optional[str] = typer.Option(None, help="Evaluate with another reverse sampler (e.g. one_step); " + choices("reverse_sampler")),
    save_topk: Optional[pathlib.Path] = typer.Option(None, help="Write each user's top-K list (the dataset's own ids) to this TSV file."),
    k: int = typer.Option(20, "-k", help="List length for --save-topk."),
    force: bool = typer.Option(False, "--force", help="Replace the --save-topk or --save-sweep file (only one that diffrec wrote)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    output_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    sweep: Optional[str] = typer.Option(None, help="KEY=V1,V2,...: evaluate once per value of a setting that needs no retraining, e.g. reverse_sampler.steps=1,2,4,8."),
    save_sweep: Optional[pathlib.Path] = typer.Option(None, help="With --sweep: write the points (metrics and seconds per value) to this JSON file, for `diffrec plot --sweep`."),
    threads: int = typer.Option(0, "--threads", help=THREADS_HELP),
) -> None:
    """Re-evaluate a saved run (full-catalogue ranking) and optionally export top-K lists or sweep a setting."""
    from diffrec.checkpoint import RunDir
    from diffrec.evaluation import TOPK_HEADER, is_topk_file
    from diffrec.evaluation import evaluate as run_eval
    from diffrec.files import atomic_file, check_overwrite

    if split not in ("test", "valid"):
        raise DiffrecError(f"unknown split {split!r}; valid choices: test, valid")
    if k < 1:
        raise DiffrecError("-k must be >= 1")
    use_threads(threads)
    if save_topk is not None:
        check_overwrite(save_topk, force, is_topk_file, "top-K list")
    sets = [*([f"reverse_sampler={reverse_sampler}"] if reverse_sampler is not None else []), *set_]
    sets += [f"eval.{key}={value}" for key, value in (("protocol", eval_protocol), ("seed", eval_seed)) if value is not None]
    if sweep is not None or save_sweep is not None:
        return _sweep(checkpoint, sweep, save_sweep, force, sets, data, split, device, output_json)
    cfg, model, record, dev = load_checkpoint(checkpoint, device, sets)
    dataset = RunDir(checkpoint).open_data(cfg, data, warn=lambda line: err_console.print(line, highlight=False))
    if dataset.num_items != record["num_items"]:
        raise DiffrecError(f"the data has {dataset.num_items} items but the model was trained on {record['num_items']}")
    if save_topk is not None and k > dataset.num_items:
        raise DiffrecError(f"-k {k} exceeds the {dataset.num_items} items")
    from diffrec.distributed import world_from_env

    world = world_from_env(dev.type)
    if world.distributed:  # torchrun: each process evaluates a shard of the batches
        if save_topk is not None:
            raise DiffrecError("--save-topk needs one process (not torchrun)")
        cfg.eval.rng = "per_batch"
    started = time.perf_counter()
    result = run_eval(model, dataset, split, cfg.eval, max_len=cfg.model.max_len, device=dev, save_topk=k if save_topk else 0, show_progress=console.is_terminal, world=world)
    seconds = time.perf_counter() - started
    if save_topk is not None:
        with atomic_file(save_topk) as tmp, tmp.open("w") as fh:
            fh.write(TOPK_HEADER)
            for u, items in zip(result.users, result.topk):
                user = dataset.user_ids[u] if dataset.user_ids is not None else str(u)
                fh.write(user + "\t" + " ".join(_item_names(dataset, items)) + "\n")
    if output_json and world.main:
        print(dump_json({"split": split, "protocol": cfg.eval.protocol, "metrics": result.metrics, "seconds": seconds, "world_size": world.size}))
    else:
        print_metrics(f"{dataset.name} {split} ({cfg.eval.protocol} protocol, {result.num_users:,} users)", {split: result.metrics})
        if save_topk is not None:
            console.print(f"top-{k} lists written to {save_topk}", highlight=False)


def _sweep(checkpoint, sweep, save_sweep, force, sets, data, split, device, output_json) -> None:
    """``evaluate --sweep``: one evaluation per value, a table, and optionally the points as JSON."""
    from diffrec.files import atomic_write, check_overwrite
    from diffrec.sweep import is_sweep_file, parse_sweep, run_sweep
    from diffrec.building import select_device

    if sweep is None:
        raise DiffrecError("--save-sweep needs --sweep KEY=V1,V2,...")
    key, values = parse_sweep(sweep)
    if save_sweep is not None:
        check_overwrite(save_sweep, force, is_sweep_file, "sweep")
    log = (lambda line: None) if output_json else (lambda line: console.print(line, highlight=False))
    result = run_sweep(checkpoint, key, values, sets=sets, data=data, split=split, device=select_device(device), log=log)
    text = dump_json(result)
    if save_sweep is not None:
        atomic_write(save_sweep, text + "\n")
        log(f"sweep written to {save_sweep}")
    if output_json:
        print(text)


def _item_names(dataset, items) -> list[str]:
    if dataset.item_ids is None:
        return [str(int(i)) for i in items]
    return [dataset.item_ids[int(i)] for i in items]


# the other commands register after train and evaluate, so that help lists them in this order
from diffrec.cli import recommend, study, results, listing, data_cmds  # noqa: E402,F401


def _click_classes() -> tuple[type, tuple, type]:
    """ClickException, NoArgsIsHelpError (or nothing) and Abort, wherever this typer keeps them."""
    try:  # typer >= 0.22 carries its own copy of click
        from typer._click import core, exceptions
    except ImportError:
        from click import core, exceptions
    no_args = getattr(exceptions, "NoArgsIsHelpError", None)
    abort = getattr(exceptions, "Abort", None) or getattr(core, "Abort", KeyboardInterrupt)
    return exceptions.ClickException, (no_args,) if no_args else (), abort


def main() -> None:
    """The console script: every error, usage errors included, is one line on stderr."""
    click_exception, no_args_is_help, abort = _click_classes()
    try:
        code = app(standalone_mode=False)
    except DiffrecError as exc:  # errors raised while building the command (e.g. option help)
        fail(str(exc))
        sys.exit(2)
    except click_exception as exc:
        if no_args_is_help and isinstance(exc, no_args_is_help):
            exc.show()  # a bare command group prints its help
        else:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "diffrec"
            fail(f"{' '.join(exc.format_message().split())} (see '{where} --help')")
        sys.exit(exc.exit_code)
    except (abort, KeyboardInterrupt):
        fail("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
