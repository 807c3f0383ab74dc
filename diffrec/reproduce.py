"""Reproduction of the paper's Table 2 under one protocol: models x seeds on a shipped dataset.

Each (model, seed) run lives in its own run directory, so a reproduction that is
interrupted continues where it stopped (finished runs are reused, unfinished ones
resumed). The summary holds, per model, the per-seed and aggregated (mean, std)
validation and test metrics in percent, a paired t-test of DiffuRec against each other
model over the seeds, the commands, the git SHA, the machine and the wall time.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffrec import checkpoint as ckpt
from diffrec.config import RunConfig
from diffrec.data import load_dataset
from diffrec.errors import DiffrecError

DATASETS = ("beauty", "toys", "ml-1m")

#: The paper's Table 2 (percent, full ranking) for the models registered here.
PAPER = {
    "beauty": {
        "diffurec": {"HR@5": 5.5758, "HR@10": 7.9068, "HR@20": 11.1098, "NDCG@5": 4.0047, "NDCG@10": 4.7494, "NDCG@20": 5.5566},
        "sasrec": {"HR@5": 3.2688, "HR@10": 6.2648, "HR@20": 8.9791, "NDCG@5": 2.3989, "NDCG@10": 3.2305, "NDCG@20": 3.6563},
        "stosa": {"HR@5": 3.5457, "HR@10": 6.2048, "HR@20": 9.5939, "NDCG@5": 2.5554, "NDCG@10": 3.2085, "NDCG@20": 3.7609},
        "gru4rec": {"HR@5": 1.0112, "HR@10": 1.9370, "HR@20": 3.8531, "NDCG@5": 0.6084, "NDCG@10": 0.9029, "NDCG@20": 1.3804},
        "caser": {"HR@5": 1.6188, "HR@10": 2.8166, "HR@20": 4.4048, "NDCG@5": 0.9758, "NDCG@10": 1.3602, "NDCG@20": 1.7595},
        "bert4rec": {"HR@5": 2.1326, "HR@10": 3.7160, "HR@20": 5.7922, "NDCG@5": 1.3207, "NDCG@10": 1.8291, "NDCG@20": 2.3541},
    },
    "toys": {
        "diffurec": {"HR@5": 5.5650, "HR@10": 7.4587, "HR@20": 9.8417, "NDCG@5": 4.1667, "NDCG@10": 4.7724, "NDCG@20": 5.3684},
        "sasrec": {"HR@5": 4.5333, "HR@10": 6.5496, "HR@20": 9.2263, "NDCG@5": 3.0105, "NDCG@10": 3.7533, "NDCG@20": 4.3323},
        "stosa": {"HR@5": 4.2236, "HR@10": 6.9393, "HR@20": 9.5096, "NDCG@5": 3.1017, "NDCG@10": 3.8806, "NDCG@20": 4.3789},
        "gru4rec": {"HR@5": 1.1009, "HR@10": 1.8553, "HR@20": 3.1827, "NDCG@5": 0.6983, "NDCG@10": 0.9396, "NDCG@20": 1.2724},
        "caser": {"HR@5": 0.9622, "HR@10": 1.8317, "HR@20": 2.9500, "NDCG@5": 0.5707, "NDCG@10": 0.8510, "NDCG@20": 1.1293},
        "bert4rec": {"HR@5": 1.9260, "HR@10": 2.9312, "HR@20": 4.5889, "NDCG@5": 1.1630, "NDCG@10": 1.4870, "NDCG@20": 1.9038},
    },
    "ml-1m": {
        "diffurec": {"HR@5": 17.9659, "HR@10": 26.2647, "HR@20": 36.7870, "NDCG@5": 12.1150, "NDCG@10": 14.7909, "NDCG@20": 17.4386},
        "sasrec": {"HR@5": 9.3812, "HR@10": 16.8941, "HR@20": 28.3180, "NDCG@5": 5.3165, "NDCG@10": 7.7277, "NDCG@20": 10.5946},
        "stosa": {"HR@5": 7.0495, "HR@10": 14.3941, "HR@20": 24.9871, "NDCG@5": 3.7174, "NDCG@10": 6.0771, "NDCG@20": 8.7241},
        "gru4rec": {"HR@5": 5.1139, "HR@10": 10.1664, "HR@20": 18.6995, "NDCG@5": 3.0529, "NDCG@10": 4.6754, "NDCG@20": 6.8228},
        "caser": {"HR@5": 7.1401, "HR@10": 13.3792, "HR@20": 22.5507, "NDCG@5": 4.1550, "NDCG@10": 6.1400, "NDCG@20": 8.4304},
        "bert4rec": {"HR@5": 13.6393, "HR@10": 20.5675, "HR@20": 29.9479, "NDCG@5": 8.8922, "NDCG@10": 11.1251, "NDCG@20": 13.4763},
    },
}


@dataclass(frozen=True)
class Preset:
    """A named model setting: the model's registry name plus ModelConfig overrides."""

    model: str
    overrides: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    #: an evaluation-only control: re-evaluate this preset's trained run (same seed) instead of training
    reevaluates: str | None = None


PRESETS: dict[str, Preset] = {
    "diffurec": Preset("diffurec", (), "DiffuRec with the public code's settings"),
    "diffurec-lambda0": Preset("diffurec", (("delta", 0.0),), "control: lambda = 0, the noised target never reaches the approximator"),
    "diffurec-1step": Preset("diffurec", (("reverse_sampler", "one_step"),), "control: the diffurec run evaluated with a single reverse step", reevaluates="diffurec"),
    "diffurec-keypad": Preset("diffurec", (("attention_mask", "key_padding"),), "control: padding keys masked"),
    "diffurec-pos": Preset(
        "diffurec",
        (("attention_mask", "key_padding"), ("position_embedding", True)),
        "variant: learned positions (commented out in the public code), padding keys masked so that trimming stays exact",
    ),
    "diffurec-dropout": Preset("diffurec", (("dropout", 0.2),), "variant: the approximator's dropout at 0.2 instead of the public code's 0.1"),
    "diffurec-nodropout": Preset("diffurec", (("dropout", 0.0),), "variant: no dropout in the approximator (the public code's 0.1); the embedding dropout stays"),
    "diffurec-embdrop0.2": Preset("diffurec", (("emb_dropout", 0.2),), "variant: the item-embedding dropout at 0.2 instead of the public code's 0.3"),
    "diffurec-embdrop0.5": Preset("diffurec", (("emb_dropout", 0.5),), "variant: the item-embedding dropout at 0.5 instead of the public code's 0.3"),
    "sasrec": Preset("sasrec", (("loss", "bce"),), "SASRec, its paper's BCE with one sampled negative"),
    "sasrec-own": Preset(
        "sasrec",
        (("loss", "bce"), ("hidden_size", 50), ("num_blocks", 2), ("num_heads", 1), ("dropout", 0.5), ("emb_dropout", 0.5)),
        "SASRec with its paper's settings for the Amazon data: d = 50, 2 blocks, 1 head, dropout 0.5, BCE",
    ),
    "sasrec-own-ml1m": Preset(
        "sasrec",
        (("loss", "bce"), ("hidden_size", 50), ("num_blocks", 2), ("num_heads", 1), ("dropout", 0.2), ("emb_dropout", 0.2)),
        "SASRec with its paper's settings for MovieLens-1M: d = 50, 2 blocks, 1 head, dropout 0.2, BCE",
    ),
    "sasrec-ce": Preset("sasrec", (("loss", "ce"),), "SASRec trained with full-catalogue cross-entropy"),
    "gru4rec": Preset("gru4rec", (("loss", "bpr"),), "GRU4Rec, ranking loss with sampled negatives"),
    "gru4rec-ce": Preset("gru4rec", (("loss", "ce"),), "GRU4Rec, full-catalogue cross-entropy"),
    "bert4rec": Preset("bert4rec", (("loss", "ce"),), "BERT4Rec, cloze objective"),
    "bert4rec-own": Preset(
        "bert4rec",
        (("loss", "ce"), ("hidden_size", 64), ("num_blocks", 2), ("num_heads", 2), ("dropout", 0.1), ("emb_dropout", 0.1), ("options", {"mask_prob": 0.6})),
        "BERT4Rec with its paper's settings for Beauty: d = 64, 2 blocks, 2 heads, dropout 0.1, mask proportion 0.6",
    ),
    "bert4rec-ce": Preset("bert4rec", (("loss", "ce"), ("options", {"objective": "next"})), "BERT4Rec trained on the next item with full cross-entropy"),
    "caser": Preset("caser", (("loss", "bce"),), "Caser, BCE with sampled negatives"),
    "caser-own": Preset("caser", (("loss", "bce"), ("hidden_size", 50), ("num_heads", 1), ("dropout", 0.5)), "Caser with its paper's settings: d = 50, dropout 0.5, BCE"),
    "caser-ce": Preset("caser", (("loss", "ce"),), "Caser, full-catalogue cross-entropy"),
    "stosa": Preset("stosa", (("loss", "bpr"),), "STOSA, Wasserstein attention, BPR plus its distance regulariser"),
    "stosa-own": Preset(
        "stosa",
        (("loss", "bpr"), ("hidden_size", 64), ("num_blocks", 1), ("num_heads", 4), ("dropout", 0.3), ("emb_dropout", 0.3), ("options", {"attn_dropout": 0.0})),
        "STOSA with its authors' Beauty settings: d = 64, 1 block, 4 heads, hidden dropout 0.3, no attention dropout, BPR",
    ),
    "stosa-ce": Preset("stosa", (("loss", "ce"), ("options", {"objective": "next"})), "STOSA trained with full cross-entropy on -W2 scores"),
    "sasrec-ce-tuned": Preset(
        "sasrec",
        (("loss", "ce"), ("hidden_size", 64), ("num_blocks", 2), ("num_heads", 1), ("dropout", 0.5), ("emb_dropout", 0.5)),
        "SASRec with full cross-entropy at BSARec's tuned settings: d = 64, 2 blocks, 1 head, dropout 0.5",
    ),
    "bsarec": Preset(
        "bsarec",
        (("loss", "ce"), ("hidden_size", 64), ("num_blocks", 2), ("num_heads", 1), ("dropout", 0.5), ("emb_dropout", 0.5), ("options", {"c": 5, "alpha": 0.7, "attn_dropout": 0.5})),
        "BSARec with its authors' Beauty settings: d = 64, 2 blocks, 1 head, hidden and attention dropout 0.5, c = 5, alpha = 0.7, full cross-entropy",
    ),
    "bsarec-toys": Preset(
        "bsarec",
        (("loss", "ce"), ("hidden_size", 64), ("num_blocks", 2), ("num_heads", 1), ("dropout", 0.5), ("emb_dropout", 0.5), ("options", {"c": 3, "alpha": 0.7, "attn_dropout": 0.5})),
        "BSARec with the Toys settings of the BSARec reproducibility study (Hutter et al.): c = 3, alpha = 0.7, 1 head; otherwise as bsarec",
    ),
    "dreamrec": Preset(
        "dreamrec",
        (("loss", "mse"), ("hidden_size", 64), ("num_blocks", 1), ("num_heads", 1), ("dropout", 0.1), ("emb_dropout", 0.1)),
        "DreamRec with its authors' settings: d = 64, 1 block, 1 head, dropout 0.1, x0-MSE, exp schedule T = 200, guidance w = 2, p_uncond 0.1",
    ),
    "dreamrec-ce": Preset(
        "dreamrec",
        (("loss", "ce"), ("hidden_size", 64), ("num_blocks", 1), ("num_heads", 1), ("dropout", 0.1), ("emb_dropout", 0.1)),
        "variant: dreamrec trained with DiffuRec's full-catalogue cross-entropy on x0_hat instead of its MSE",
    ),
    "preferdiff": Preset(
        "preferdiff",
        (("loss", "mse"), ("hidden_size", 64), ("num_blocks", 1), ("num_heads", 2), ("dropout", 0.1), ("emb_dropout", 0.1), ("options", {"lamda": 0.4, "reverse_sampler": {"name": "ddim", "steps": 21, "guidance": 8.0}})),
        "PreferDiff with its authors' Beauty settings on ID embeddings: d = 64, 1 block, 2 heads, lambda 0.4, gamma 5, w = 8, linear T = 2000, DDIM 21 steps",
    ),
    "preferdiff-toys": Preset(
        "preferdiff",
        (("loss", "mse"), ("hidden_size", 64), ("num_blocks", 1), ("num_heads", 2), ("dropout", 0.1), ("emb_dropout", 0.1), ("options", {"lamda": 0.6, "reverse_sampler": {"name": "ddim", "steps": 21, "guidance": 6.0}})),
        "PreferDiff with its authors' Toys settings on ID embeddings: lambda 0.6, w = 6; otherwise as preferdiff",
    ),
    "bsarec-sasrec": Preset(
        "bsarec",
        (("loss", "ce"), ("hidden_size", 64), ("num_blocks", 2), ("num_heads", 1), ("dropout", 0.5), ("emb_dropout", 0.5), ("options", {"c": 5, "alpha": 0.0, "attn_dropout": 0.5})),
        "control: bsarec with alpha = 0, the post-LN SASRec of BSARec's codebase (no frequency branch)",
    ),
}

#: Training recipes: "paper" = the public code's schedule; "fast" = the named convergence options;
#: "long" = "fast" with a longer stretch at the full learning rate; "sequence" = SASRec's own training
#: (one example per user, a target at every position, batch 128, 200 epochs at a constant 1e-3) for
#: the models that take sequence examples (sasrec, gru4rec, stosa; bert4rec cloze-masks the whole
#: window); "fast-2x" = "fast" at twice the learning rate, after a warm-up; "fast-b1024" = "fast"
#: at the paper's batch size.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"model": {}, "train": {}},
    "fast": {
        "model": {"emb_init_std": 0.05},
        "train": {"epochs": 21, "eval_every": 3, "patience": 2, "lr_step": 15},
    },
    # "fast" with 27 epochs at the full rate before the decay, instead of 15, and the patience to
    # reach it (validation at the full rate is noisier than after the decay).
    "long": {
        "model": {"emb_init_std": 0.05},
        "train": {"epochs": 33, "eval_every": 3, "patience": 4, "lr_step": 27},
    },
    "sequence": {
        "model": {},
        "train": {"examples": "sequence", "batch_size": 128, "epochs": 200, "eval_every": 10, "patience": 5, "lr_step": 200},
    },
}
# "fast" at twice the learning rate, reached by a linear warm-up over the first 500 steps
RECIPES["fast-2x"] = {"model": dict(RECIPES["fast"]["model"]), "train": {**RECIPES["fast"]["train"], "lr": 2e-3, "warmup_steps": 500}}
# "fast" at the paper's batch of 1024 (Sec. 5.4; the public code uses 512): half the updates per epoch
RECIPES["fast-b1024"] = {"model": dict(RECIPES["fast"]["model"]), "train": {**RECIPES["fast"]["train"], "batch_size": 1024}}
# BSARec's training: every prefix, batch 256, Adam at a constant 5e-4 for up to 200 epochs, validation every epoch, patience 10
RECIPES["bsarec"] = {
    "model": {},
    "train": {"examples": "prefix", "batch_size": 256, "lr": 5e-4, "epochs": 200, "eval_every": 1, "patience": 10, "lr_step": 200},
}

# DreamRec's training: every prefix, batch 256, Adam at a constant 5e-3; validation every 5 epochs (the authors run 1,000 epochs and validate every 10)
RECIPES["dreamrec"] = {
    "model": {},
    "train": {"examples": "prefix", "batch_size": 256, "lr": 5e-3, "epochs": 100, "eval_every": 5, "patience": 4, "lr_step": 100},
}
# PreferDiff's training: every prefix, batch 256, Adam at 1e-4 after a 10,000-step warm-up, gradients clipped at 1, up to 150 epochs, patience 10
RECIPES["preferdiff"] = {
    "model": {},
    "train": {"examples": "prefix", "batch_size": 256, "lr": 1e-4, "warmup_steps": 10000, "grad_clip": 1.0, "epochs": 150, "eval_every": 1, "patience": 10, "lr_step": 150},
}

#: Dataset-specific settings of the paper (max_len 200 for ML-1M).
DATASET_SETTINGS: dict[str, dict[str, Any]] = {"beauty": {"max_len": 50}, "toys": {"max_len": 50}, "ml-1m": {"max_len": 200}}


def preset_config(name: str, dataset: str, recipe: str, seed: int, data_path: str) -> RunConfig:
    if name not in PRESETS:
        raise DiffrecError(f"unknown model preset {name!r}; valid choices: {', '.join(PRESETS)}")
    if recipe not in RECIPES:
        raise DiffrecError(f"unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
    preset = PRESETS[name]
    if RECIPES[recipe]["train"].get("examples") == "sequence":
        from diffrec.trainer import sequence_example_models

        if preset.model not in sequence_example_models():
            raise DiffrecError(f"recipe {recipe!r} trains a target at every position, which model preset {name!r} does not support")
    config = RunConfig()
    config.model.model = preset.model
    declared = config.model.declared()
    recipe_model = {k: v for k, v in RECIPES[recipe]["model"].items() if k in declared}  # e.g. emb_init_std, for the models that have it
    for key, value in {**DATASET_SETTINGS[dataset], **recipe_model, **dict(preset.overrides)}.items():
        setattr(config.model, key, dict(value) if isinstance(value, dict) else value)
    for key, value in RECIPES[recipe]["train"].items():
        setattr(config.train, key, value)
    config.train.seed = seed
    config.data.path = data_path
    return config.validate()


METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")


def entry_key(name: str, recipe: str) -> str:
    """Summary key of a preset trained with a recipe: the bare name for the paper's recipe."""
    return name if recipe == "paper" else f"{name}@{recipe}"


def _check_same_run(stored: RunConfig, wanted: RunConfig, run_dir: pathlib.Path) -> None:
    """Refuse to reuse or resume a run directory whose model or dataset differ from the preset's."""
    a, b = stored.to_dict()["model"], wanted.to_dict()["model"]
    diff = sorted(k for k in set(a) | set(b) if k != "kernel_backend" and a.get(k) != b.get(k))
    if pathlib.Path(stored.data.path).name != pathlib.Path(wanted.data.path).name:
        diff.append("dataset")
    if diff:
        raise DiffrecError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); move it away or pick another --out")


def _never_trained(run: ckpt.RunDir, finished: bool, run_dir: pathlib.Path, epochs: int, final: dict[str, Any]) -> bool:
    """Whether a run directory without a checkpoint to resume from may be started over: true when
    it is absent or holds no finished epoch (a run stopped during its first epoch); an error when
    it holds epochs whose checkpoint is gone (a fresh checkout keeps configs and metrics only)."""
    if finished:
        raise DiffrecError(
            f"{run_dir} finished after {final.get('epochs_run', '?')} epochs; extending it to {epochs} needs its "
            f"checkpoint {ckpt.LAST}, which is not there; restore it, or reuse the run with --epochs {final.get('epochs_run', '?')}"
        )
    log_file = run.file(ckpt.EPOCHS)
    if log_file.is_file() and log_file.read_text().strip():
        raise DiffrecError(f"{run_dir} holds trained epochs but no checkpoint {ckpt.LAST} to resume from; restore it or move the directory away")
    return run_dir.is_dir()


def _previous_entries(path: pathlib.Path) -> dict[str, Any]:
    """Model entries of an earlier summary, so runs of other models and recipes stay in the table."""
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DiffrecError(f"cannot read the earlier summary {path}: {err}") from None
    models = summary.get("models") if isinstance(summary, dict) else None
    if not isinstance(models, dict) or "dataset" not in summary:
        raise DiffrecError(f"refusing to replace {path}: it is not a reproduction summary written by diffrec; move it away or pick another --out")
    return {k: v for k, v in models.items() if isinstance(v, dict) and "recipe" in v and "runs" in v}


def _with_earlier_seeds(earlier: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any]:
    """The entry plus the seeds that an earlier invocation ran for the same preset and recipe and
    this one did not: seeds accumulate across invocations (``--seed 1999`` adds to 1997 and 1998)."""
    if earlier is None or earlier.get("recipe") != entry["recipe"]:
        return entry
    ran = {r["seed"] for r in entry["runs"]}
    kept = [r for r in earlier["runs"] if isinstance(r, dict) and r.get("seed") not in ran and "test" in r and "valid" in r]
    if not kept:
        return entry
    runs = sorted(kept + entry["runs"], key=lambda r: r["seed"])
    return {**entry, "runs": runs, "test": aggregate([r["test"] for r in runs]), "valid": aggregate([r["valid"] for r in runs])}


def paired_t_test(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test (None with fewer than two pairs or zero variance)."""
    if len(a) < 2 or len(a) != len(b):
        return None
    from scipy import stats

    diff = np.asarray(a) - np.asarray(b)
    if np.allclose(diff, diff[0]):
        return None
    return float(stats.ttest_rel(a, b).pvalue)


def t_tests(reference: dict[str, Any], entry: dict[str, Any]) -> dict[str, float | None]:
    """Paired t-test p-value per test metric of two summary entries, over the seeds both ran."""
    by_seed = {r["seed"]: r for r in reference["runs"]}
    pairs = [(by_seed[r["seed"]], r) for r in entry["runs"] if r["seed"] in by_seed]
    return {
        metric: paired_t_test([a["test"][metric] for a, _ in pairs], [b["test"][metric] for _, b in pairs])
        for metric in METRICS
    }


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=pathlib.Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.system()} {cpu}, {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}"


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation over seeds (std is None for a single seed)."""
    keys = per_seed[0].keys()
    return {
        k: {
            "mean": float(np.mean([r[k] for r in per_seed])),
            "std": float(np.std([r[k] for r in per_seed], ddof=1)) if len(per_seed) > 1 else None,
        }
        for k in keys
    }


def reproduce(
    dataset: str,
    *,
    models: list[str],
    seeds: list[int],
    data_root: pathlib.Path,
    out_dir: pathlib.Path,
    recipe: str = "paper",
    overrides: Callable[[RunConfig], None] | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or reuse) every (model, seed) run and write ``out_dir/<dataset>.json``."""
    from diffrec.trainer import RESUMABLE_CHANGES, Trainer

    if dataset not in DATASETS:
        raise DiffrecError(f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS)}")
    data_path = data_root / dataset
    for name in models:  # unknown presets and recipes a preset cannot train are refused before any training
        preset_config(name, dataset, recipe, seeds[0] if seeds else 0, str(data_path))
    _previous_entries(out_dir / f"{dataset}.json")  # so is a file in the summary's place that diffrec did not write
    data = load_dataset(data_path)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "dataset": dataset,
        "recipe": recipe,
        "seeds": seeds,
        "unit": "percent",
        "protocol": "correct",
        "git_sha": git_sha(),
        "machine": machine(),
        "models": {},
        "paper": PAPER.get(dataset, {}),
    }
    models = sorted(models, key=lambda m: PRESETS[m].reevaluates is not None)  # trained runs first
    for name in models:
        entry: dict[str, Any] = {
            "preset": PRESETS[name].description,
            "recipe": recipe,
            "git_sha": summary["git_sha"],
            "runs": [],
        }
        for seed in seeds:
            config = preset_config(name, dataset, recipe, seed, str(data_path))
            if overrides is not None:
                overrides(config)
                config.validate()
            run_dir = out_dir / "runs" / dataset / recipe / name / f"seed{seed}"
            run = ckpt.RunDir(run_dir)
            if run.file(ckpt.CONFIG).is_file():
                _check_same_run(run.config().validate(), config, run_dir)
            command = f"diffrec train --config {run_dir / ckpt.CONFIG} --out {run_dir}"
            finished = run.file(ckpt.FINAL).is_file()
            final = run.read_json(ckpt.FINAL) if finished else {}
            if PRESETS[name].reevaluates is not None:
                base = out_dir / "runs" / dataset / recipe / PRESETS[name].reevaluates / f"seed{seed}"
                command = f"diffrec evaluate --checkpoint {base} --reverse-sampler {config.model.reverse_sampler}"
                final = _reevaluated(name, base, config, data, run, final, log)
                entry["runs"].append({"seed": seed, "run_dir": str(run_dir), "command": command, **final})
                continue
            extend = finished and not final.get("stopped_early") and final.get("epochs_run", 0) < config.train.epochs
            if finished and not extend:
                log(f"{name} seed {seed}: reusing {run_dir}")
            else:
                resume = run.file(ckpt.LAST).is_file()
                fresh = not resume and _never_trained(run, finished, run_dir, config.train.epochs, final)
                if resume:
                    wanted = config.train
                    config = run.config()
                    stored = config.train
                    config.train = dataclasses.replace(stored, **{key: getattr(wanted, key) for key in RESUMABLE_CHANGES})
                    for key in ("epochs", "patience"):  # never shorten a run or its patience
                        if getattr(wanted, key) < getattr(stored, key):
                            log(f"{name} seed {seed}: keeps its {key} of {getattr(stored, key)}; a resumed run is never shortened (asked for {getattr(wanted, key)})")
                        setattr(config.train, key, max(getattr(wanted, key), getattr(stored, key)))
                log(f"{name} seed {seed}: {'resuming' if resume else 'training'} in {run_dir}")
                t0 = time.perf_counter()
                earlier = final.get("wall_seconds", 0.0) if finished else 0.0
                final = Trainer(config, data, run_dir, data_path=str(data_path), show_progress=show_progress).fit(resume=resume, force=fresh)
                if "wall_seconds" not in final:  # a run begun before the trainer timed its epochs
                    final["wall_seconds"] = earlier + time.perf_counter() - t0  # the invocations that finished
                run.write_json(ckpt.FINAL, final)
            entry["runs"].append({"seed": seed, "run_dir": str(run_dir), "command": command, **final})
        entry["machine"] = machine()  # after training, which sets the thread count
        entry["test"] = aggregate([r["test"] for r in entry["runs"]])
        entry["valid"] = aggregate([r["valid"] for r in entry["runs"]])
        summary["models"][entry_key(name, recipe)] = entry
    # entries of earlier (or concurrent) invocations stay; each records its own recipe, git SHA and
    # machine. The file is re-read here, after training, so a run that finished meanwhile is kept.
    # A lock beside the summary serialises this read-merge-write between processes.
    with ckpt.waiting_lock(out_dir / f".{dataset}.json.lock"):
        previous = _previous_entries(out_dir / f"{dataset}.json")
        summary["models"] = {**previous, **{k: _with_earlier_seeds(previous.get(k), v) for k, v in summary["models"].items()}}
        for key, entry in summary["models"].items():
            for old in [k for k in entry if k.startswith("t_test_vs_")]:
                del entry[old]
            reference = entry_key("diffurec", entry["recipe"])
            if key == reference or reference not in summary["models"]:
                continue
            entry["t_test_vs_" + reference] = t_tests(summary["models"][reference], entry)
        summary["machine"] = machine()
        summary["wall_seconds"] = time.perf_counter() - started
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(out_dir / f"{dataset}.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _reevaluated(name: str, base_dir: pathlib.Path, config: RunConfig, data: Any, run: ckpt.RunDir, final: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Metrics of an evaluation-only control: the base run's best weights under this preset's model config."""
    from diffrec.evaluation import evaluate
    from diffrec.trainer import build_model, select_device

    base = ckpt.RunDir(base_dir)
    if not base.file(ckpt.FINAL).is_file():
        raise DiffrecError(f"{name} re-evaluates {base_dir}, which has not finished; train {base_dir.parent.name} first (list it in --models)")
    base_final = base.read_json(ckpt.FINAL)
    stamp = {"reevaluates": str(base_dir), "base_epochs_run": base_final.get("epochs_run"), "base_best_epoch": base_final.get("best_epoch")}
    if final and all(final.get(k) == v for k, v in stamp.items()):
        log(f"{name} seed {config.train.seed}: reusing {run.path}")
        return final
    log(f"{name} seed {config.train.seed}: re-evaluating {base_dir}")
    base_config = base.config()
    for key in ("epochs", "seed"):
        setattr(config.train, key, getattr(base_config.train, key))
    t0 = time.perf_counter()
    if config.train.num_threads > 0:
        import torch

        torch.set_num_threads(config.train.num_threads)
    device = select_device(config.train.device)
    model = build_model(config, int(base.dataset()["num_items"])).to(device)
    weights = base.file(ckpt.BEST)
    ckpt.load_model_tensors(model, ckpt.load_tensors(weights), weights)
    model.eval()
    common = dict(max_len=config.model.max_len, device=device, show_progress=False)
    result = {
        "valid": evaluate(model, data, "valid", config.eval, **common).metrics,
        "test": evaluate(model, data, "test", config.eval, **common).metrics,
        "unit": "percent",
        "protocol": config.eval.protocol,
        "epochs_run": base_final.get("epochs_run"),
        "best_epoch": base_final.get("best_epoch"),
        **stamp,
    }
    result["wall_seconds"] = time.perf_counter() - t0
    run.path.mkdir(parents=True, exist_ok=True)
    config.save(run.file(ckpt.CONFIG))
    run.write_json(ckpt.FINAL, result)
    return result


def _mean_std(cell: dict[str, float | None]) -> str:
    return f"{cell['mean']:.2f}" if cell["std"] is None else f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def markdown_table(summary: dict[str, Any], reference: str | None = None) -> str:
    """Test metrics (mean ± std over seeds), epochs run, paired-t-test p-values and wall time per
    seed. The tests compare each entry with DiffuRec of the same recipe over the seeds both ran or,
    given ``reference`` (a summary key such as ``diffurec@fast``), with that entry, so that recipes
    and controls can be tested against each other."""
    keys = METRICS
    tested = ("HR@10", "NDCG@10")
    if reference is not None and reference not in summary["models"]:
        raise DiffrecError(f"no entry {reference!r} in the summary; valid choices: {', '.join(summary['models'])}")
    against = reference or "DiffuRec"
    lines = [
        f"| model | seeds | epochs | {' | '.join(keys)} | {' | '.join(f'p {k} vs {against}' for k in tested)} | wall per seed |",
        "|---|---|---|" + "---|" * (len(keys) + len(tested)) + "---|",
    ]
    for name, entry in summary["models"].items():
        cells = [_mean_std(entry["test"][k]) for k in keys]
        if reference is None:
            t_test = next((v for k, v in entry.items() if k.startswith("t_test_vs_")), {})
        else:
            t_test = {} if name == reference else t_tests(summary["models"][reference], entry)
        p_values = ["n/a" if t_test.get(k) is None else f"{t_test[k]:.3g}" for k in tested]
        runs = entry["runs"]
        epochs = sorted({r.get("epochs_run") for r in runs if r.get("epochs_run") is not None})
        wall = [r["wall_seconds"] for r in runs if r.get("wall_seconds") is not None]
        lines.append(
            f"| {name} | {len(runs)} | {'/'.join(map(str, epochs)) or '?'} | {' | '.join(cells)} | {' | '.join(p_values)} | "
            f"{_duration(float(np.mean(wall))) if wall else '?'} |"
        )
    for name, row in summary.get("paper", {}).items():
        lines.append(f"| paper: {name} | 5 | | {' | '.join(f'{row[k]:.2f}' for k in keys)} | {' | '.join('' for _ in tested)} | |")
    return "\n".join(lines)
