"""``diffrec analyze``: where a trained model is accurate, how diverse its lists are, what sampling more buys.

For one split (test by default), with the evaluation's protocol (padding never ranked):

- accuracy (HR@K, NDCG@K) by the target's popularity in the training parts: the head (the
  most popular 20% of items) against the long tail, and five quintiles of items by training
  frequency (Q1 the most popular), as the DiffuRec paper's Figure 8 breaks them down;
- accuracy by history length, in buckets of the input's length (Figure 9);
- beyond accuracy, on the top-K lists: catalogue coverage@K (the share of items recommended
  to anybody), novelty (the mean self-information -log2 p(i) of recommended items, p from
  training frequencies with add-one smoothing), the Gini index of exposure (of how often each
  item is recommended; 0 = equal exposure) and intra-list diversity (the mean pairwise
  1 - cos between recommended items' embeddings);
- multi-sample retrieval (Sec. 6.7): S reverse samples per user (sample s seeded with the
  evaluation seed + s), fused by averaging their scores or by reciprocal-rank fusion
  (sum of 1 / (60 + rank)), with accuracy and diversity for S = 1, 2, 4, ... A model without
  a reverse process draws the same list every time; it is analysed with one sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from diffrec.config import EvalConfig
from diffrec.data.batching import EvalInputs
from diffrec.data.dataset import SequenceData
from diffrec.errors import DiffrecError
from diffrec.evaluation import make_generator
from diffrec.metrics import metrics_from_ranks, target_ranks
from diffrec.progress import progress_bar

#: history-length buckets (inclusive lower bounds)
LENGTH_BUCKETS = (1, 5, 10, 20, 50)
RRF_K = 60


def sample_counts(samples: int) -> list[int]:
    """1, 2, 4, ... up to ``samples`` (and ``samples`` itself)."""
    counts, s = [], 1
    while s < samples:
        counts.append(s)
        s *= 2
    return [*counts, samples]


def _ranks_of_all(scores: torch.Tensor) -> torch.Tensor:
    """Rank (0 = best) of every column per row: (B, N + 1)."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


@torch.no_grad()
def analyze_model(model: Any, data: SequenceData, config: EvalConfig, *, max_len: int, split: str = "test", k: int = 10, samples: int = 1, device: torch.device, show_progress: bool = False) -> dict[str, Any]:
    """Every analysis of the module docstring for one model; percentages where a metric is a rate."""
    if samples < 1:
        raise DiffrecError(f"--samples must be >= 1, got {samples}")
    if not hasattr(model, "reverse"):
        samples = 1  # deterministic: every sample is the same list
    counts_grid = sample_counts(samples)
    model.eval()
    inputs = EvalInputs(data, split, max_len)
    gens = [make_generator(device, config.seed + s) for s in range(samples)]
    per_user = {f"HR@{k}": [], f"NDCG@{k}": []}
    users_seen: list[np.ndarray] = []
    topk: list[torch.Tensor] = []
    fused = {(s, how): {"hits": [], "ndcg": [], "lists": []} for s in counts_grid for how in ("score", "rrf")}
    batches = inputs.batches(config.batch_size, bucketing=True, trim=model.trims_padding_exactly)
    total = (len(inputs) + config.batch_size - 1) // config.batch_size
    for batch in progress_bar(batches, total=total, description=f"analyze {split}", enabled=show_progress):
        batch = batch.to(device)
        draws = []
        for gen in gens:
            scores = model.full_sort_predict(batch, gen).float()  # (B, N + 1)
            if not torch.isfinite(scores).all():
                raise DiffrecError("the model produced non-finite scores; its weights may be damaged")
            scores[:, 0] = float("-inf")
            draws.append(scores)
        values = metrics_from_ranks(target_ranks(draws[0], batch.target), [k])
        for key in per_user:
            per_user[key].append(values[key].cpu())
        users_seen.append(batch.users.cpu().numpy())
        topk.append(torch.topk(draws[0], k, dim=1).indices.cpu())
        ranks = [_ranks_of_all(d) for d in draws] if samples > 1 else None
        for s in counts_grid:
            mean_scores = torch.stack(draws[:s]).mean(0)
            rrf = mean_scores if ranks is None else (1.0 / (RRF_K + 1.0 + torch.stack(ranks[:s]).float())).sum(0)
            rrf = rrf.masked_fill(torch.isinf(draws[0]), float("-inf"))
            for how, fused_scores in (("score", mean_scores), ("rrf", rrf)):
                m = metrics_from_ranks(target_ranks(fused_scores, batch.target), [k])
                fused[(s, how)]["hits"].append(m[f"HR@{k}"].cpu())
                fused[(s, how)]["ndcg"].append(m[f"NDCG@{k}"].cpu())
                fused[(s, how)]["lists"].append(torch.topk(fused_scores, k, dim=1).indices.cpu())
    order = np.argsort(np.concatenate(users_seen))
    hr = torch.cat(per_user[f"HR@{k}"]).numpy()[order]
    ndcg = torch.cat(per_user[f"NDCG@{k}"]).numpy()[order]
    lists = torch.cat(topk).numpy()[order]
    table = model.item_table().detach().float().cpu()
    train_counts = _train_counts(data)
    targets = data.test_targets() if split == "test" else data.valid_targets()
    lengths = np.array([len(data.test_input(u) if split == "test" else data.valid_input(u)) for u in range(data.num_users)])
    return {
        "overall": {f"HR@{k}": 100 * float(hr.mean()), f"NDCG@{k}": 100 * float(ndcg.mean()), "users": int(len(hr))},
        "popularity": _by_popularity(hr, ndcg, targets, train_counts, k),
        "length": _by_length(hr, ndcg, lengths, k),
        "beyond": beyond_accuracy(lists, train_counts, table),
        "samples": [
            {"samples": s, "fusion": how, f"HR@{k}": 100 * float(torch.cat(v["hits"]).mean()), f"NDCG@{k}": 100 * float(torch.cat(v["ndcg"]).mean()), **_diversity(torch.cat(v["lists"]).numpy(), table)}
            for (s, how), v in fused.items()
        ],
        "deterministic": not hasattr(model, "reverse"),
    }


def _train_counts(data: SequenceData) -> np.ndarray:
    counts = np.zeros(data.num_items + 1, dtype=np.int64)
    for u in range(data.num_users):
        np.add.at(counts, np.asarray(data.train_part(u), dtype=np.int64), 1)
    return counts


def _group(hr: np.ndarray, ndcg: np.ndarray, mask: np.ndarray, k: int) -> dict[str, float]:
    n = int(mask.sum())
    if n == 0:
        return {"users": 0, f"HR@{k}": math.nan, f"NDCG@{k}": math.nan}
    return {"users": n, f"HR@{k}": 100 * float(hr[mask].mean()), f"NDCG@{k}": 100 * float(ndcg[mask].mean())}


def _by_popularity(hr: np.ndarray, ndcg: np.ndarray, targets: np.ndarray, counts: np.ndarray, k: int) -> dict[str, Any]:
    """Head (top 20% of items by training frequency) against tail, and five item quintiles."""
    items = np.argsort(-counts[1:], kind="stable") + 1  # most popular first
    group = np.empty(len(counts), dtype=np.int64)
    group[items] = np.minimum(np.arange(len(items)) * 5 // len(items), 4)  # quintile 0..4 per item
    head = group[targets] == 0
    return {
        "head": _group(hr, ndcg, head, k),
        "tail": _group(hr, ndcg, ~head, k),
        "quintiles": [{"quintile": q + 1, **_group(hr, ndcg, group[targets] == q, k)} for q in range(5)],
        "head_share_of_interactions": float(counts[items[: max(1, len(items) // 5)]].sum() / max(1, counts.sum())),
    }


def _by_length(hr: np.ndarray, ndcg: np.ndarray, lengths: np.ndarray, k: int) -> list[dict[str, Any]]:
    bounds = [*LENGTH_BUCKETS, math.inf]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        mask = (lengths >= lo) & (lengths < hi)
        out.append({"lengths": f"{lo}-{hi - 1}" if hi != math.inf else f"{lo}+", **_group(hr, ndcg, mask, k)})
    return out


def _diversity(lists: np.ndarray, table: torch.Tensor) -> dict[str, float]:
    """Coverage (%) and intra-list diversity of top-K lists (U, K)."""
    return {"coverage": 100 * len(np.unique(lists)) / (table.shape[0] - 1), "ild": intra_list_diversity(lists, table)}


def intra_list_diversity(lists: np.ndarray, table: torch.Tensor, chunk: int = 4096) -> float:
    """Mean pairwise 1 - cos between the items of each list, averaged over lists."""
    normed = torch.nn.functional.normalize(table, dim=-1)
    k = lists.shape[1]
    if k < 2:
        return 0.0
    total = 0.0
    for start in range(0, len(lists), chunk):
        e = normed[torch.as_tensor(lists[start : start + chunk])]  # (C, K, d)
        sims = e @ e.transpose(1, 2)  # (C, K, K)
        off = (sims.sum((1, 2)) - sims.diagonal(dim1=1, dim2=2).sum(1)) / (k * (k - 1))
        total += float((1.0 - off).sum())
    return total / len(lists)


def beyond_accuracy(lists: np.ndarray, counts: np.ndarray, table: torch.Tensor) -> dict[str, float]:
    """Coverage@K (%), novelty (bits), Gini of exposure and intra-list diversity of top-K lists (U, K)."""
    n = len(counts) - 1
    p = (counts[1:] + 1) / (counts[1:].sum() + n)  # add-one smoothed training frequency of items 1..N
    novelty = float(np.mean(-np.log2(p[lists - 1])))
    exposure = np.sort(np.bincount(lists.ravel(), minlength=n + 1)[1:].astype(np.float64))
    ranks = np.arange(1, n + 1)
    gini = float(((2 * ranks - n - 1) * exposure).sum() / (n * exposure.sum())) if exposure.sum() else 0.0
    return {**_diversity(lists, table), "novelty": novelty, "gini": gini, "k": int(lists.shape[1])}
