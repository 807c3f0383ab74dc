"""Leave-one-out, full-catalogue evaluation of a recommender.

``protocol="correct"`` (default): the padding id 0 is never ranked and metrics
are averaged per user. ``protocol="official"`` reproduces the public code:
id 0 is ranked like an item and metrics are averaged per batch (batches of
``EvalConfig.batch_size`` users in dataset order). The reverse process is
driven by a generator seeded with ``EvalConfig.seed``, so evaluating the same
weights twice prints the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffrec.config import EvalConfig
from diffrec.data.batching import EvalInputs
from diffrec.data.dataset import SequenceData
from diffrec.metrics import metric_keys, metrics_from_ranks, target_ranks
from diffrec.models.base import Recommender
from diffrec.progress import progress_bar


#: first line of every top-K list that ``diffrec evaluate --save-topk`` writes
TOPK_HEADER = "user\titems\n"


def is_topk_file(path) -> bool:
    """Whether ``path`` is a top-K list that ``evaluate --save-topk`` wrote."""
    from diffrec.files import read_head

    return read_head(path, len(TOPK_HEADER)) == TOPK_HEADER.encode()


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
) -> EvalResult:
    """HR/NDCG/MRR@K (percent) of ``model`` on the validation or test targets."""
    config.validate()
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
    for batch in progress_bar(batches, total=num_batches, description=f"eval {split}", enabled=show_progress):
        batch = batch.to(device)
        scores = model.full_sort_predict(batch, gen).float()  # (B, N + 1)
        if not torch.isfinite(scores).all():
            raise FloatingPointError("the model produced non-finite scores")
        if not official:
            scores[:, 0] = float("-inf")
        if config.exclude_history:
            for row, hist in enumerate(inputs.history(batch.users.cpu().numpy())):
                scores[row, torch.as_tensor(hist, device=device)] = float("-inf")
        values = metrics_from_ranks(target_ranks(scores, batch.target), config.ks)
        for key, v in values.items():
            per_user[key].append(v.cpu())
            batch_means[key].append(float(v.mean()))
        if save_topk:
            all_topk.append(torch.topk(scores, save_topk, dim=1).indices.cpu())
            all_users.append(batch.users.cpu())
    model.train(was_training)
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
