"""Training throughput (examples per second) of DiffuRec and SASRec on Amazon Beauty.

d = 128, 4 blocks, batch 512, max_len 50, Adam; every prefix of every training part is an
example (131,413 per epoch on Beauty). By default one full epoch per model is timed after a
short warm-up; ``--batches N`` times N batches spread evenly over the epoch's length
distribution instead (quicker, same mix of lengths). The last line printed is JSON:
``{"diffurec": ..., "sasrec": ...}``.

``--compare CHECKOUT`` also times the authors' public DiffuRec training step in the same run
(same data, d, blocks, batch and defaults as its ``main.py``: its data loader, its model, its
cross-entropy loss, Adam) and adds ``"public"`` and ``"speedup"`` (diffurec over public) to the
JSON. CHECKOUT is a checkout of the public repository (or its ``src`` folder); its modules are
imported from there, nothing of it is copied.

    python benchmarks/train_throughput.py --data ../shared/datasets/beauty [--no-bucketing] [--precision bf16]
    python benchmarks/train_throughput.py --batches 60 --compare ~/src/DiffuRec
    python benchmarks/train_throughput.py --models diffurec --setting dropout_rng=counter \
        --setting 'approximator={"name": "transformer", "last_block_output_only": true}'
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from diffrec.config import ModelConfig, RunConfig, TrainConfig
from diffrec.data import TrainExamples, load_dataset
from diffrec.registry import load_builtin_parts, registry
from diffrec.building import build_model


def parse_settings(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs, each VALUE JSON where it parses (``true``, ``{"name": ...}``) and a string otherwise."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--setting takes KEY=VALUE, got {pair!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def measure(model_name: str, data, args) -> dict:
    settings = parse_settings(args.setting) if model_name == "diffurec" else {}
    sizes = dict(hidden_size=128, num_blocks=4, num_heads=4, max_len=50, emb_init_std=0.05)
    config = RunConfig(
        model=ModelConfig(model=model_name, **{**sizes, **settings}),
        train=TrainConfig(batch_size=512, bucketing=not args.no_bucketing, precision=args.precision),
    )
    if model_name != "diffurec":
        config.model.loss = "ce"
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(config, data.num_items).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    examples = TrainExamples(data, 50)
    batches = list(examples.batches(512, np.random.default_rng(0), bucketing=not args.no_bucketing, trim=model.trims_padding_exactly))
    if args.batches:
        by_width = sorted(batches, key=lambda b: b.seq.shape[1])
        picks = np.linspace(0, len(by_width) - 1, args.batches).round().astype(int)
        batches = [by_width[i] for i in picks]
    batches = [b.to(device) for b in batches]

    def step(batch) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model.calculate_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:3]:  # warm-up
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    n, start = 0, time.perf_counter()
    for batch in batches:
        step(batch)
        n += len(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "examples": n,
        "seconds": seconds,
        "examples_per_second": n / seconds,
        "epoch_seconds_estimate": len(examples) * seconds / n,
        "mean_width": statistics.mean(b.seq.shape[1] for b in batches),
    }


PUBLIC_MODULES = ("model", "diffurec", "step_sample", "utils")


def import_public(checkout: Path):
    """The public code's ``model`` and ``utils`` modules, imported from CHECKOUT/src (or CHECKOUT)."""
    src = checkout / "src" if (checkout / "src" / "model.py").is_file() else checkout
    missing = [f"{name}.py" for name in PUBLIC_MODULES if not (src / f"{name}.py").is_file()]
    if missing:
        raise SystemExit(f"--compare: {checkout} is not a checkout of the public DiffuRec code (no {', '.join(missing)} in it or its src/)")
    for name in PUBLIC_MODULES:  # names as generic as these may already be taken
        sys.modules.pop(name, None)
    sys.path.insert(0, str(src))
    try:
        return importlib.import_module("model"), importlib.import_module("utils")
    finally:
        sys.path.remove(str(src))


def measure_public(checkout: Path, data, args) -> dict:
    """The public code's training step: its loader (padding to max_len), forward, loss_diffu_ce, Adam."""
    model_mod, utils_mod = import_public(checkout)
    defaults = argparse.Namespace(  # its main.py's defaults, with the sizes timed here
        hidden_size=128, num_blocks=4, max_len=50, batch_size=512, dropout=0.1, emb_dropout=0.3, hidden_act="gelu",
        diffusion_steps=32, noise_schedule="trunc_lin", lambda_uncertainty=0.001, schedule_sampler_name="lossaware",
        rescale_timesteps=True, item_num=data.num_items, lr=1e-3,
    )
    torch.manual_seed(0)
    shimmed = not hasattr(np, "int")
    if shimmed:  # its loss-aware sampler asks for np.int, an alias NumPy 1.24 removed
        np.int = int
    try:
        model = model_mod.Att_Diffuse_model(model_mod.create_model_diffu(defaults), defaults)
    finally:
        if shimmed:
            del np.int
    device = torch.device(args.device)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=defaults.lr)
    train = {u: data.train_part(u) for u in range(data.num_users) if len(data.train_part(u)) >= 2}
    with warnings.catch_warnings():  # it asks for pinned memory, which a CPU has not
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        loader = utils_mod.Data_Train(train, defaults).get_pytorch_dataloaders()
    # its loader pads every batch to max_len, so any batches are the epoch's mix
    wanted = args.batches or len(loader)

    def step(seq, tag) -> None:
        seq, tag = seq.to(device), tag.to(device)  # as its trainer moves each batch
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            _, rep, *_ = model(seq, tag, train_flag=True)
            loss = model.loss_diffu_ce(rep, tag)
        loss.backward()
        optimizer.step()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        warm = iter(loader)
        for _ in range(3):
            step(*next(warm))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        n, done, start = 0, 0, time.perf_counter()
        for seq, tag in loader:  # the loader's own collation is part of its step, as in its trainer
            step(seq, tag)
            n += len(seq)
            done += 1
            if done >= wanted:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"examples": n, "seconds": seconds, "examples_per_second": n / seconds, "epoch_seconds_estimate": len(loader.dataset) * seconds / n}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/beauty")
    parser.add_argument("--models", nargs="+", default=["diffurec", "sasrec"])
    parser.add_argument("--batches", type=int, default=0, help="time this many batches spread over the length mix (0 = a full epoch)")
    parser.add_argument("--no-bucketing", action="store_true", help="pad every batch to max_len as the public code does")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a DiffuRec setting for its timing (repeatable), e.g. dropout_rng=counter or "
                             'approximator=\'{"name": "transformer", "last_block_output_only": true}\'')
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the public code's step too)")
    parser.add_argument("--compare", type=Path, default=None, metavar="PUBLIC_CHECKOUT", help="also time the public DiffuRec code's training step from this checkout")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_builtin_parts()
    data = load_dataset(args.data)
    results = {}
    for name in args.models:
        if name not in registry("model"):
            print(f"skipping {name}: not a registered model", file=sys.stderr)
            continue
        info = measure(name, data, args)
        print(f"{name}: {info['examples_per_second']:.0f} examples/s over {info['examples']} examples "
              f"(mean batch width {info['mean_width']:.1f}; epoch ≈ {info['epoch_seconds_estimate']:.0f} s)", file=sys.stderr)
        results[name] = round(info["examples_per_second"], 1)
    if args.compare is not None:
        info = measure_public(args.compare.expanduser(), data, args)
        print(f"public: {info['examples_per_second']:.0f} examples/s over {info['examples']} examples "
              f"(padded to 50; epoch ≈ {info['epoch_seconds_estimate']:.0f} s)", file=sys.stderr)
        results["public"] = round(info["examples_per_second"], 1)
        if "diffurec" in results:
            results["speedup"] = round(results["diffurec"] / results["public"], 2)
    print(f"# {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bucketing={'off' if args.no_bucketing else 'on'}, precision={args.precision}", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
