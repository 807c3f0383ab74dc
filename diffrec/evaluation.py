"""Leave-one-out, full-catalogue evaluation of a recommender.

``protocol="correct"`` (default): the padding id 0 is never ranked and metrics
are averaged per user. ``protocol="official"`` reproduces the public code:
id 0 is ranked like an item and metrics are averaged per batch (batches of
``EvalConfig.batch_size`` users in dataset order). The reverse process is
driven by a generator seeded with ``EvalConfig.seed``, so evaluating the same
weights twice prints the same numbers.

Models whose scores are inner products (every baseline; the diffusion models with
any registered rounding) can be ranked without a users x items matrix: the target's
rank is streamed over item tiles (:mod:`diffrec.streaming`) and ``--save-topk`` takes
the streamed top-K. ``EvalConfig.stream`` chooses: "auto" streams above
:data:`STREAM_ABOVE` items, "always" and "never" force it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffrec.config import EvalConfig
from diffrec.data.batching import EvalInputs
from diffrec.data.dataset import SequenceData
from diffrec.distributed import SINGLE, World, gather_objects
from diffrec.errors import DiffrecError
from diffrec.metrics import metric_keys, metrics_from_ranks, target_ranks
from diffrec.models.base import Recommender
from diffrec.progress import progress_bar


#: first line of every top-K list that ``diffrec evaluate --save-topk`` writes
TOPK_HEADER = "user\titems\n"


def is_topk_file(path) -> bool:
    """Whether ``path`` is a top-K list that ``evaluate --save-topk`` wrote."""
    from diffrec.files import read_head

    return read_head(path, len(TOPK_HEADER)) == TOPK_HEADER.encode()


#: catalogues larger than this are ranked by streaming when ``EvalConfig.stream`` is "auto"
STREAM_ABOVE = 200_000


def streams(model: Recommender, data: SequenceData, config: EvalConfig) -> bool:
    """Whether this evaluation ranks by streaming over item tiles."""
    if config.stream == "never" or type(model).full_sort_queries is Recommender.full_sort_queries:
        return False
    return config.stream == "always" or data.num_items > STREAM_ABOVE


@dataclass
class EvalResult:
    metrics: dict[str, float]  # percent
    num_users: int
    topk: np.ndarray | None = None  # (U, K) item ids in user order, when asked for
    users: np.ndarray | None = None


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


@torch.no_grad()
def evaluate(
    model: Recommender,
    data: SequenceData,
    split: str,
    config: EvalConfig,
    *,
    max_len: int,
    device: torch.device,
    save_topk: int = 0,
    show_progress: bool = False,
    world: World = SINGLE,
) -> EvalResult:
    """HR/NDCG/MRR@K (percent) of ``model`` on the validation or test targets.

    With a distributed ``world`` each rank evaluates every ``world.size``-th batch and the metric
    sums are added across ranks (``config.rng`` must then be "per_batch"; top-K lists are not kept).
    """
    config.validate()
    if world.distributed and (config.rng != "per_batch" or save_topk):
        raise DiffrecError("a sharded evaluation needs eval.rng = per_batch and keeps no top-K lists")
    official = config.protocol == "official"
    inputs = EvalInputs(data, split, max_len)
    was_training = model.training
    model.eval()
    gen = make_generator(device, config.seed)
    per_user: dict[str, list[torch.Tensor]] = {k: [] for k in metric_keys(config.ks)}
    batch_means: dict[str, list[float]] = {k: [] for k in per_user}
    all_topk, all_users = [], []
    num_batches = (len(inputs) + config.batch_size - 1) // config.batch_size
    batches = inputs.batches(config.batch_size, bucketing=not official, trim=model.trims_padding_exactly)
    streamed = streams(model, data, config)
    indices: list[int] = []
    for index, batch in enumerate(progress_bar(batches, total=num_batches, description=f"eval {split}", enabled=show_progress and world.main)):
        if index % world.size != world.rank:
            continue
        batch = batch.to(device)
        if config.rng == "per_batch":
            gen = make_generator(device, config.seed * 1_000_003 + index)
        history = inputs.history(batch.users.cpu().numpy()) if config.exclude_history else None
        if streamed:
            ranks, top = _streamed(model, batch, gen, official, history, config.tile, save_topk)
        else:
            ranks, top = _dense(model, batch, gen, official, history, save_topk)
        values = metrics_from_ranks(ranks, config.ks)
        indices.append(index)
        for key, v in values.items():
            per_user[key].append(v.cpu())
            batch_means[key].append(float(v.mean()))
        if save_topk:
            all_topk.append(top.cpu())
            all_users.append(batch.users.cpu())
    model.train(was_training)
    if world.distributed:  # every process's batches, put back in batch order: the one-process numbers to the bit
        shards = gather_objects((indices, per_user, batch_means), world)
        order = sorted((i, r, j) for r, (idx, _, _) in enumerate(shards) for j, i in enumerate(idx))
        per_user = {k: [shards[r][1][k][j] for _, r, j in order] for k in per_user}
        batch_means = {k: [shards[r][2][k][j] for _, r, j in order] for k in batch_means}
    if official:
        metrics = {k: 100.0 * float(np.mean(v)) for k, v in batch_means.items()}
    else:
        metrics = {k: 100.0 * float(torch.cat(v).mean()) for k, v in per_user.items()}
    result = EvalResult(metrics=metrics, num_users=len(inputs))
    if save_topk:
        users = torch.cat(all_users).numpy()
        order = np.argsort(users)
        result.topk = torch.cat(all_topk).numpy()[order]
        result.users = users[order]
    return result


def _dense(model: Recommender, batch, gen, official: bool, history, save_topk: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target ranks (and top-K) from the full (B, N + 1) score matrix."""
    scores = model.full_sort_predict(batch, gen).float()  # (B, N + 1); -inf = not ranked (an approximate rounding)
    if torch.isnan(scores).any() or torch.isposinf(scores).any():
        raise FloatingPointError("the model produced non-finite scores")
    if not official:
        scores[:, 0] = float("-inf")
    if history is not None:
        for row, hist in enumerate(history):
            scores[row, torch.as_tensor(hist, device=scores.device)] = float("-inf")
    top = torch.topk(scores, save_topk, dim=1).indices if save_topk else None
    return target_ranks(scores, batch.target), top


def _streamed(model: Recommender, batch, gen, official: bool, history, tile: int, save_topk: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target ranks (and top-K) streamed over item tiles: never (B, N + 1)."""
    from diffrec.kernels import inner_product_topk
    from diffrec.streaming import streamed_ranks

    queries, table = model.full_sort_queries(batch, gen)  # type: ignore[misc]
    queries, table = queries.float(), table.float()
    if not (torch.isfinite(queries).all() and torch.isfinite(table).all()):
        raise FloatingPointError("the model produced non-finite scores")
    ranks = streamed_ranks(queries, table, batch.target, skip_padding=not official, exclude=history, tile=tile)
    top = None
    if save_topk:
        rows = [([0] if not official else []) + list(h) for h in (history or [[] for _ in range(len(batch))])]
        width = max(1, max(len(r) for r in rows))
        exclude = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            exclude[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        _, top = inner_product_topk(queries.contiguous(), table.contiguous(), save_topk, exclude=exclude.to(queries.device), backend="torch")
    return ranks, top
