"""Statistics of results over seeds: means, standard deviations, 95% intervals, paired t-tests, Holm's correction."""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")


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


def ci95(values: list[float]) -> tuple[float, float] | None:
    """The 95% confidence interval of the mean (Student's t), or None with fewer than two values."""
    if len(values) < 2:
        return None
    from scipy import stats

    mean = float(np.mean(values))
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean - half, mean + half


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); None stays None."""
    known = sorted((p, k) for k, p in p_values.items() if p is not None)
    m = len(known)
    adjusted: dict[str, float | None] = {k: None for k in p_values}
    running = 0.0
    for i, (p, k) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[k] = running
    return adjusted
