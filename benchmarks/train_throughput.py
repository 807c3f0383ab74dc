"""Training throughput (examples per second) of DiffuRec and SASRec on Amazon Beauty.

d = 128, 4 blocks, batch 512, max_len 50, Adam; every prefix of every training part is an
example (131,413 per epoch on Beauty). By default one full epoch per model is timed after a
short warm-up; ``--batches N`` times N batches spread evenly over the epoch's length
distribution instead (quicker, same mix of lengths). The last line printed is JSON:
``{"diffurec": ..., "sasrec": ...}``.

    python benchmarks/train_throughput.py --data ../shared/datasets/beauty [--no-bucketing] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch

from diffrec.config import ModelConfig, RunConfig, TrainConfig
from diffrec.data import TrainExamples, load_dataset
from diffrec.registry import load_builtin_parts, registry
from diffrec.trainer import build_model


def measure(model_name: str, data, args) -> dict:
    config = RunConfig(
        model=ModelConfig(model=model_name, hidden_size=128, num_blocks=4, num_heads=4, max_len=50, emb_init_std=0.05),
        train=TrainConfig(batch_size=512, bucketing=not args.no_bucketing, precision=args.precision),
    )
    if model_name != "diffurec":
        config.model.loss = "ce"
    torch.manual_seed(0)
    model = build_model(config, data.num_items)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    examples = TrainExamples(data, 50)
    batches = list(examples.batches(512, np.random.default_rng(0), bucketing=not args.no_bucketing, trim=model.trims_padding_exactly))
    if args.batches:
        by_width = sorted(batches, key=lambda b: b.seq.shape[1])
        picks = np.linspace(0, len(by_width) - 1, args.batches).round().astype(int)
        batches = [by_width[i] for i in picks]

    def step(batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model.calculate_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:3]:  # warm-up
        step(batch)
    n, start = 0, time.perf_counter()
    for batch in batches:
        step(batch)
        n += len(batch)
    seconds = time.perf_counter() - start
    return {
        "examples": n,
        "seconds": seconds,
        "examples_per_second": n / seconds,
        "epoch_seconds_estimate": len(examples) * seconds / n,
        "mean_width": statistics.mean(b.seq.shape[1] for b in batches),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/beauty")
    parser.add_argument("--models", nargs="+", default=["diffurec", "sasrec"])
    parser.add_argument("--batches", type=int, default=0, help="time this many batches spread over the length mix (0 = a full epoch)")
    parser.add_argument("--no-bucketing", action="store_true", help="pad every batch to max_len as the public code does")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=0)
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
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bucketing={'off' if args.no_bucketing else 'on'}, precision={args.precision}", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
