"""Wall time of DiffuRec's full test evaluation on Amazon Beauty, per reverse sampler.

Every test user (22,363 on Beauty) is ranked over the whole catalogue after the reverse chain:
the public code's 32 DDPM steps, and DDIM with fewer steps. The time does not depend on the
weights, so a freshly initialised model is timed unless ``--checkpoint RUN`` is given (then its
weights and settings, and the metrics printed are that run's). d = 128, 4 blocks, batch 512 as
in the paper. The last line printed is JSON: ``{"ddpm": seconds, "ddim-8": seconds, ...}``.

    python benchmarks/eval_time.py --data ../shared/datasets/beauty --threads 2
    python benchmarks/eval_time.py --samplers ddpm ddim:4 --setting 'approximator={"name": "transformer", "last_block_output_only": true}'
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from diffrec.config import DataConfig, EvalConfig, ModelConfig, RunConfig
from diffrec.data.source import open_dataset
from diffrec.evaluation import evaluate
from diffrec.registry import load_builtin_parts
from diffrec.building import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import cpu_name, parse_settings  # noqa: E402


def sampler_ref(spec: str) -> str | dict:
    """``ddpm``, ``one_step`` or ``ddim:STEPS`` as a reverse-sampler part reference."""
    name, _, steps = spec.partition(":")
    return {"name": name, "steps": int(steps)} if steps else name


def label(spec: str) -> str:
    return spec.replace(":", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/beauty")
    parser.add_argument("--samplers", nargs="+", default=["ddpm", "ddim:8", "ddim:4", "one_step"], help="ddpm, one_step or ddim:STEPS")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a run directory whose weights and settings to use")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE", help="a DiffuRec setting (repeatable)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_builtin_parts()
    data = open_dataset(DataConfig(path=args.data))  # a path, or "synthetic" for the built-in data
    device = torch.device("cpu")
    if args.checkpoint is not None:
        from diffrec.building import load_run_model

        base, loaded, _ = load_run_model(args.checkpoint, device)
        state = loaded.state_dict()
    else:
        base = RunConfig(model=ModelConfig(model="diffurec", hidden_size=128, num_blocks=4, num_heads=4, max_len=50, emb_init_std=0.05))
        state = None
    results = {}
    for spec in args.samplers:
        config = copy.deepcopy(base)
        for key, value in {**parse_settings(args.setting), "reverse_sampler": sampler_ref(spec)}.items():
            setattr(config.model, key, value)
        config.model.validate()
        torch.manual_seed(0)
        model = build_model(config, data.num_items)
        if state is not None:
            model.load_state_dict(state)
        start = time.perf_counter()
        result = evaluate(model, data, "test", config.eval if args.checkpoint is not None else EvalConfig(), max_len=config.model.max_len, device=device)
        seconds = time.perf_counter() - start
        results[label(spec)] = round(seconds, 1)
        print(f"{label(spec)}: {seconds:.1f} s for {result.num_users} users "
              f"(HR@10 {result.metrics['HR@10']:.2f}, NDCG@10 {result.metrics['NDCG@10']:.2f})", file=sys.stderr)
    print(f"# {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
