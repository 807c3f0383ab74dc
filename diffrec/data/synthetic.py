"""A small seeded dataset with planted sequential structure, for offline runs and tests.

Items ``1..num_items`` are split into clusters of ``cluster_size`` consecutive ids. Each
item gets ``branching`` successors drawn from its own cluster (never itself), with
transition weights from a symmetric Dirichlet. A user starts at a uniformly random
item and walks: with probability ``1 - noise`` to a successor of the current item
(chosen by the weights), otherwise to a uniformly random item. Sequence lengths are
uniform in ``[min_length, max_length]``.

The next item therefore depends on the current one: a model that learns the
transitions can reach about the Bayes-optimal hit rate :func:`oracle_hr_at_k`
(0.90 HR@10 with the defaults: ``1 - noise`` plus the noise mass on the top ten; the
next-item entropy, :func:`next_item_entropy`, is about 2.6 bits), far above popularity
(:func:`popularity_hr_at_k`, about 0.06) and random ranking (``k / num_items`` = 0.02). The generating process is
stored in ``meta["generator"]``, so the oracle can be computed later.

``zipf`` > 0 draws the starting items and the random jumps from a Zipf law over the ids
(p(i) proportional to i^-zipf: item 1 the most popular), as real catalogues' popularity
is, and builds the transition graph vectorised, so that catalogues of 10^6 items and more
generate in seconds (``diffrec data synth``). With ``zipf`` = 0 the data is the same as it
always was for the same arguments.
"""

from __future__ import annotations

import numpy as np

from diffrec.data.dataset import MIN_SEQUENCE_LENGTH, SequenceData
from diffrec.errors import DataError


def make_synthetic(
    num_users: int = 2000,
    num_items: int = 500,
    seed: int = 0,
    *,
    min_length: int = 5,
    max_length: int = 20,
    cluster_size: int = 10,
    branching: int = 3,
    noise: float = 0.1,
    concentration: float = 2.0,
    zipf: float = 0.0,
) -> SequenceData:
    """Generate the synthetic dataset; the same arguments always give the same data.

    ``noise`` is the probability of a random next item; ``concentration`` is the Dirichlet
    parameter of the successor weights (smaller = more peaked); ``zipf`` the exponent of the
    items' popularity (0 = uniform; see the module docstring).
    """
    _check_arguments(num_users, num_items, min_length, max_length, cluster_size, branching, noise, concentration)
    if zipf < 0:
        raise DataError(f"synthetic: zipf must be >= 0, got {zipf}")
    rng = np.random.default_rng(seed)
    graph = _transition_graph if zipf == 0 else _transition_graph_vectorised
    successors, weights = graph(rng, num_items, cluster_size, branching, concentration)
    draw = (lambda size: rng.integers(1, num_items + 1, size=size)) if zipf == 0 else _zipf_sampler(rng, num_items, zipf)
    lengths = rng.integers(min_length, max_length + 1, size=num_users)
    walks = np.empty((num_users, max_length), dtype=np.int64)
    current = draw(num_users)
    walks[:, 0] = current
    cumulative = np.cumsum(weights, axis=1)
    for step in range(1, max_length):
        pick = (rng.random(num_users)[:, None] > cumulative[current - 1]).sum(axis=1)
        pick = np.minimum(pick, branching - 1)
        follow = successors[current - 1, pick]
        jump = draw(num_users)
        current = np.where(rng.random(num_users) < noise, jump, follow)
        walks[:, step] = current
    sequences = [walks[u, : lengths[u]].tolist() for u in range(num_users)]
    data = SequenceData(
        sequences=sequences,
        num_items=num_items,
        name="synthetic",
        user_ids=[str(u + 1) for u in range(num_users)],
        item_ids=None,
        source=f"synthetic(seed={seed})",
        meta={
            "format": "synthetic",
            "seed": seed,
            "generator": {
                "successors": successors.tolist() if zipf == 0 else successors,  # arrays for Zipf catalogues, which may be large
                "weights": weights.tolist() if zipf == 0 else weights,
                "noise": noise,
                "zipf": zipf,
                "cluster_size": cluster_size,
                "min_length": min_length,
                "max_length": max_length,
            },
        },
    )
    data.meta["oracle_hr@10"] = oracle_hr_at_k(data, 10)
    data.meta["random_hr@10"] = min(10, num_items) / num_items
    return data


def _check_arguments(
    num_users: int,
    num_items: int,
    min_length: int,
    max_length: int,
    cluster_size: int,
    branching: int,
    noise: float,
    concentration: float,
) -> None:
    """Raise DataError for arguments that cannot produce a valid dataset."""
    if num_users < 1:
        raise DataError(f"synthetic: num_users must be >= 1, got {num_users}")
    if not MIN_SEQUENCE_LENGTH <= min_length <= max_length:
        raise DataError(f"synthetic: need {MIN_SEQUENCE_LENGTH} <= min_length <= max_length, got {min_length} and {max_length}")
    if not 1 <= branching < cluster_size <= num_items:
        raise DataError(
            f"synthetic: need 1 <= branching < cluster_size <= num_items, got {branching}, {cluster_size}, {num_items}"
        )
    if not 0.0 <= noise <= 1.0:
        raise DataError(f"synthetic: noise must be in [0, 1], got {noise}")
    if concentration <= 0:
        raise DataError(f"synthetic: concentration must be > 0, got {concentration}")


def _transition_graph(
    rng: np.random.Generator, num_items: int, cluster_size: int, branching: int, concentration: float
) -> tuple[np.ndarray, np.ndarray]:
    """Successor ids (num_items x branching, 1-based) and their weights (rows sum to 1).

    Clusters are runs of ``cluster_size`` consecutive ids; a last cluster shorter than
    ``branching + 1`` is merged into the one before it so every item has enough peers.
    """
    starts = list(range(0, num_items, cluster_size))
    if len(starts) > 1 and num_items - starts[-1] < branching + 1:
        starts.pop()
    bounds = starts + [num_items]
    successors = np.empty((num_items, branching), dtype=np.int64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        for item in range(lo, hi):
            peers = np.array([p for p in range(lo, hi) if p != item])
            successors[item] = rng.choice(peers, size=branching, replace=False) + 1
    weights = rng.dirichlet(np.full(branching, concentration), size=num_items)
    return successors, weights


def _transition_graph_vectorised(
    rng: np.random.Generator, num_items: int, cluster_size: int, branching: int, concentration: float
) -> tuple[np.ndarray, np.ndarray]:
    """The graph of :func:`_transition_graph` (clusters of consecutive ids, ``branching`` distinct
    peers each, a too-short last cluster merged into the one before), drawn for all items at once."""
    starts = list(range(0, num_items, cluster_size))
    if len(starts) > 1 and num_items - starts[-1] < branching + 1:
        starts.pop()
    bounds = np.asarray(starts + [num_items])
    lengths = np.diff(bounds)
    first = np.repeat(bounds[:-1], lengths)  # each item's cluster start (0-based)
    size = np.repeat(lengths, lengths)
    position = np.arange(num_items) - first
    successors = np.empty((num_items, branching), dtype=np.int64)
    for s in np.unique(size):
        rows = size == s
        offsets = np.argsort(rng.random((int(rows.sum()), int(s) - 1)), axis=1)[:, :branching] + 1  # distinct, in 1..s-1
        successors[rows] = first[rows, None] + (position[rows, None] + offsets) % s + 1
    weights = rng.dirichlet(np.full(branching, concentration), size=num_items)
    return successors, weights


def _zipf_sampler(rng: np.random.Generator, num_items: int, exponent: float):
    """Draws of ids 1..N with p(i) proportional to i^-exponent (inverse-CDF sampling)."""
    cdf = np.cumsum(np.arange(1, num_items + 1, dtype=np.float64) ** -exponent)
    cdf /= cdf[-1]

    def draw(size: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), num_items - 1) + 1

    return draw


def transition_matrix(data: SequenceData) -> np.ndarray:
    """P(next | current) of the generating process, shape (N+1) x (N+1); row/column 0 unused."""
    generator = data.meta.get("generator")
    if generator is None:
        raise DataError(f"{data.name}: not a synthetic dataset (no generating process in meta)")
    n = data.num_items
    noise = generator["noise"]
    probs = np.zeros((n + 1, n + 1))
    probs[1:, 1:] = noise / n
    successors = np.asarray(generator["successors"], dtype=np.int64)
    weights = np.asarray(generator["weights"], dtype=np.float64)
    rows = np.repeat(np.arange(1, n + 1), successors.shape[1])
    np.add.at(probs, (rows, successors.reshape(-1)), (1.0 - noise) * weights.reshape(-1))
    return probs


def oracle_hr_at_k(data: SequenceData, k: int = 10) -> float:
    """Best achievable expected HR@k on the test targets of a synthetic dataset.

    For each user, the Bayes-optimal ranking given the history puts the ``k`` most
    likely successors of the second-to-last item first; its expected hit rate is their
    total probability. The mean over users bounds what any model can reach on average.
    The top mass is computed from the successors alone (each gets (1 - noise) w + noise / N,
    every other item noise / N, with uniform jumps), so it needs no N x N matrix.
    """
    generator = data.meta.get("generator")
    if generator is None:
        raise DataError(f"{data.name}: not a synthetic dataset (no generating process in meta)")
    n, noise = data.num_items, generator["noise"]
    k = min(k, n)
    weights = -np.sort(-np.asarray(generator["weights"], dtype=np.float64), axis=1)  # (N, b), largest first
    taken = min(k, weights.shape[1])
    top_mass = (1.0 - noise) * weights[:, :taken].sum(axis=1) + k * noise / n
    contexts = np.array([seq[-2] for seq in data.sequences], dtype=np.int64)
    return float(top_mass[contexts - 1].mean())


def next_item_entropy(data: SequenceData) -> float:
    """Mean entropy (bits) of the next test item given the history, under the generating process."""
    probs = transition_matrix(data)[1:, 1:]
    logs = np.log2(probs, where=probs > 0, out=np.zeros_like(probs))
    entropy = -(probs * logs).sum(axis=1)
    contexts = np.array([seq[-2] for seq in data.sequences], dtype=np.int64)
    return float(entropy[contexts - 1].mean())


def popularity_hr_at_k(data: SequenceData, k: int = 10) -> float:
    """HR@k on the test targets when every user gets the items most frequent in training parts."""
    counts = np.zeros(data.num_items + 1, dtype=np.int64)
    for u in range(data.num_users):
        np.add.at(counts, np.asarray(data.train_part(u), dtype=np.int64), 1)
    counts[0] = -1
    order = np.argsort(-counts, kind="stable")[: min(k, data.num_items)]
    return float(np.isin(data.test_targets(), order).mean())
