"""Model presets, training recipes and the paper's Table 2: what ``diffrec reproduce`` trains.

A preset is a registered model plus settings; a recipe the training schedule (and the few
model settings, such as the item-embedding init, that a recipe changes for the models that
declare them). :func:`preset_config` combines a preset, a recipe, a dataset and a seed into
a validated :class:`RunConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffrec.config import RunConfig
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
    "diffurec-fastpath": Preset(
        "diffurec",
        (("dropout_rng", "counter"), ("approximator", {"name": "transformer", "last_block_output_only": True})),
        "DiffuRec's function on the fast training path: counter-hash dropout masks, the last block for the output position only",
    ),
    "diffurec-seq": Preset(
        "diffurec",
        (("attention_mask", "causal"), ("injection", "own_position")),
        "variant: each history position carries its own next item noised, causal attention; trains on sequence examples too",
    ),
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
    "dreamrec-ce-tuned": Preset(
        "dreamrec",
        (("loss", "ce"), ("hidden_size", 64), ("num_blocks", 2), ("num_heads", 1), ("dropout", 0.5), ("emb_dropout", 0.5), ("emb_init_std", 0.05)),
        "variant: dreamrec-ce with BSARec's tuned encoder settings (d = 64, 2 blocks, 1 head, dropout 0.5) and item embeddings drawn N(0, 0.05^2)",
    ),
    "dreamrec-cosine": Preset(
        "dreamrec",
        (("loss", "cosine"), ("hidden_size", 64), ("num_blocks", 1), ("num_heads", 1), ("dropout", 0.1), ("emb_dropout", 0.1)),
        "variant: dreamrec trained on the squared cosine error of x0_hat (direction only) instead of its MSE, which learned embeddings can shrink to zero",
    ),
    "preferdiff": Preset(
        "preferdiff",
        (("loss", "mse"), ("hidden_size", 64), ("num_blocks", 1), ("num_heads", 2), ("dropout", 0.1), ("emb_dropout", 0.1), ("options", {"lamda": 0.4, "reverse_sampler": {"name": "ddim", "steps": 21, "guidance": 8.0}})),
        "PreferDiff with its authors' Beauty settings on ID embeddings: d = 64, 1 block, 2 heads, lambda 0.4, gamma 5, w = 8, linear T = 2000, DDIM 21 steps",
    ),
    "preferdiff-cosine": Preset(
        "preferdiff",
        (("loss", "cosine"), ("hidden_size", 64), ("num_blocks", 1), ("num_heads", 2), ("dropout", 0.1), ("emb_dropout", 0.1), ("options", {"lamda": 0.4, "reverse_sampler": {"name": "ddim", "steps": 21, "guidance": 8.0}})),
        "PreferDiff as its README runs it on ID embeddings (the cosine error, lambda 0.4, w = 8), at d = 64 instead of its 3,072; otherwise as preferdiff",
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

#: What each recipe is for, in a few words; :func:`recipe_settings` lists what it sets.
RECIPE_PURPOSE: dict[str, str] = {
    "paper": "the public code's schedule",
    "fast": "named convergence options",
    "long": "fast with a longer stretch at the full learning rate",
    "sequence": "SASRec's training: one example per user, a target at every position (the models that take sequence examples)",
    "fast-2x": "fast at twice the learning rate, after a warm-up",
    "fast-b1024": "fast at the paper's batch of 1024",
    "bsarec": "BSARec's training",
    "dreamrec": "DreamRec's training",
    "preferdiff": "PreferDiff's training",
}


def recipe_settings(name: str) -> str:
    """The settings a recipe changes from the defaults, e.g. ``epochs=21, lr_step=15``."""
    recipe = RECIPES[name]
    pairs = [*recipe["model"].items(), *recipe["train"].items()]
    return ", ".join(f"{k}={v}" for k, v in pairs) or "the defaults"


def recipe_names() -> str:
    return ", ".join(RECIPES)


#: Dataset-specific settings of the paper (max_len 200 for ML-1M).
DATASET_SETTINGS: dict[str, dict[str, Any]] = {"beauty": {"max_len": 50}, "toys": {"max_len": 50}, "ml-1m": {"max_len": 200}}


def preset_config(name: str, dataset: str, recipe: str, seed: int, data_path: str) -> RunConfig:
    if name not in PRESETS:
        raise DiffrecError(f"unknown model preset {name!r}; valid choices: {', '.join(PRESETS)}")
    if recipe not in RECIPES:
        raise DiffrecError(f"unknown recipe {recipe!r}; valid choices: {', '.join(RECIPES)}")
    preset = PRESETS[name]
    config = RunConfig()
    config.model.model = preset.model
    declared = config.model.declared()
    recipe_model = {k: v for k, v in RECIPES[recipe]["model"].items() if k in declared}  # e.g. emb_init_std, for the models that have it
    for key, value in {**DATASET_SETTINGS[dataset], **recipe_model, **dict(preset.overrides)}.items():
        setattr(config.model, key, dict(value) if isinstance(value, dict) else value)
    if RECIPES[recipe]["train"].get("examples") == "sequence" and not config.model.model_class().takes_sequence_examples(config.model):
        raise DiffrecError(f"recipe {recipe!r} trains a target at every position, which model preset {name!r} does not support")
    for key, value in RECIPES[recipe]["train"].items():
        setattr(config.train, key, value)
    config.train.seed = seed
    config.data.path = data_path
    return config.validate()


