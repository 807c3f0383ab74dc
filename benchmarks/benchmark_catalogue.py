"""Peak memory and time against the catalogue's size: a DiffuRec training step, full evaluation, recommendation.

For N = 10^4 ... 10^6 items (``--items``) on a synthetic catalogue (``diffrec data synth``'s:
Zipf popularity, planted structure, ``--users`` users), each measurement runs in a fresh
process, so its peak resident memory is its own:

- ``train``: DiffuRec training steps (d = 128, 4 blocks, batch 512) with the full-catalogue
  cross-entropy through B x N logits (``ce``) and through the fused kernel (``ce_fused``);
- ``eval``: the test split's full ranking, dense (a users x items score matrix per batch) and
  streamed over item tiles, with the reverse chain of ``--steps`` steps;
- ``recommend``: the top 10 of 512 histories (streamed top-K);
- ``--epoch``: one whole training epoch with ``ce_fused`` and the streamed evaluation, the
  issue's target (20,000 users x 10^6 items under 6 GiB).

Prints a Markdown table and, with ``--out PREFIX``, writes PREFIX.json and PREFIX.png.

    python benchmarks/benchmark_catalogue.py --items 10000 100000 1000000 --out benchmarks/catalogue
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _config(items: int, loss, steps: int):
    from diffrec.config import EvalConfig, ModelConfig, RunConfig, TrainConfig

    return RunConfig(
        model=ModelConfig(model="diffurec", hidden_size=128, num_blocks=4, num_heads=4, max_len=50, loss=loss, emb_init_std=0.05, diffusion_steps=steps),
        train=TrainConfig(batch_size=512),
        eval=EvalConfig(batch_size=512),
    )


def one(kind: str, items: int, users: int, mode: str, steps: int, batches: int, threads: int) -> dict:
    """One measurement in this process: seconds and peak RSS (GiB)."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)

    from diffrec.data import TrainExamples, make_synthetic
    from diffrec.evaluation import evaluate
    from diffrec.building import build_model

    data = make_synthetic(users, items, seed=0, zipf=1.0)
    # "dense" holds the B x (N + 1) logits even above the size where ce fuses by itself
    loss = "ce_fused" if mode in ("fused", "epoch") else {"name": "ce", "fused": "never"}
    config = _config(items, loss, steps)
    torch.manual_seed(0)
    model = build_model(config, data.num_items)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if kind in ("train", "epoch"):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        examples = TrainExamples(data, 50)
        done = 0
        for batch in examples.batches(512, np.random.default_rng(0)):
            loss_value = model.calculate_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss_value.backward()
            optimizer.step()
            done += 1
            if kind == "train" and done >= batches:
                break
        seconds = time.perf_counter() - started
        out = {"steps": done, "seconds": seconds, "seconds_per_step": seconds / done}
        if kind == "epoch":
            config.eval.stream = "always"
            t0 = time.perf_counter()
            metrics = evaluate(model, data, "test", config.eval, max_len=50, device=torch.device("cpu")).metrics
            out.update(eval_seconds=time.perf_counter() - t0, test_hr10=metrics["HR@10"])
    elif kind == "eval":
        config.eval.stream = "always" if mode == "streamed" else "never"
        metrics = evaluate(model, data, "test", config.eval, max_len=50, device=torch.device("cpu")).metrics
        out = {"seconds": time.perf_counter() - started, "test_hr10": metrics["HR@10"]}
    elif kind == "recommend":
        from diffrec.data import EvalInputs

        model.eval()
        batch = next(EvalInputs(data, "test", 50).batches(512))
        with torch.no_grad():
            _, ids = model.recommend(batch, 10, batch.seq.clone(), torch.Generator().manual_seed(0))
        out = {"seconds": time.perf_counter() - started, "rows": int(ids.shape[0])}
    else:
        raise SystemExit(f"unknown measurement {kind}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"kind": kind, "items": items, "users": users, "mode": mode, **out, "peak_gib": peak / 2**20, "model_and_data_gib": base / 2**20}


def run(kind: str, items: int, users: int, mode: str, steps: int, batches: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, str(items), str(users), mode, str(steps), str(batches), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"kind": kind, "items": items, "mode": mode, "error": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| measurement | N items | mode | seconds | peak RSS (GiB) |", "|---|---:|---|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['items']:,} | {r['mode']} | failed: {r['error']} | |")
            continue
        secs = r.get("seconds_per_step", r["seconds"])
        unit = " per step" if "seconds_per_step" in r else ""
        lines.append(f"| {r['kind']} | {r['items']:,} | {r['mode']} | {secs:.2f}{unit} | {r['peak_gib']:.2f} |")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for kind, mode in sorted({(r["kind"], r["mode"]) for r in rows if "error" not in r}):
        points = sorted((r["items"], r["peak_gib"], r.get("seconds_per_step", r["seconds"])) for r in rows if r["kind"] == kind and r["mode"] == mode and "error" not in r)
        axes[0].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{kind} ({mode})")
        axes[1].plot([p[0] for p in points], [p[2] for p in points], marker="o", label=f"{kind} ({mode})")
    axes[1].set_yscale("log")
    for ax, label in zip(axes, ("peak RSS (GiB)", "seconds (train: per step)")):
        ax.set_xscale("log")
        ax.set_xlabel("items N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": "diffrec"})


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        kind, items, users, mode, steps, batches, threads = sys.argv[2], *map(int, sys.argv[3:5]), sys.argv[5], *map(int, sys.argv[6:9])
        print(json.dumps(one(kind, items, users, mode, steps, batches, threads)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=32, help="reverse steps of the evaluation")
    parser.add_argument("--batches", type=int, default=3, help="training steps timed per measurement")
    parser.add_argument("--epoch", action="store_true", help="also one whole ce_fused epoch and a streamed evaluation at the largest N")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per measurement (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="PREFIX: write PREFIX.json and PREFIX.png")
    args = parser.parse_args()
    rows = []
    for n in args.items:
        for kind, mode in (("train", "dense"), ("train", "fused"), ("eval", "dense"), ("eval", "streamed"), ("recommend", "streamed")):
            rows.append(run(kind, n, args.users, mode, args.steps, args.batches, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    if args.epoch:
        rows.append(run("epoch", max(args.items), args.users, "epoch", args.steps, 0, args.threads))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(rows, indent=2) + "\n")
        figure(rows, Path(f"{args.out}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
