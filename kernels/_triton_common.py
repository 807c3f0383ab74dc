"""Pieces shared by the Triton kernels: launch configurations, autotuning, test overrides, bf16 helpers.

Launch configurations
    Each launcher builds, per call, a short list of candidate ``triton.Config`` objects for
    CUDA (the first one is the hand-picked default) and one fixed, small configuration for
    Triton's interpreter. :func:`launch` then either autotunes over the CUDA list
    (``triton.autotune``, one tuner per *family* of shapes, keyed on the feature size; the
    first call of a family benchmarks every candidate, later calls reuse the winner) or runs a
    single configuration. The interpreter never autotunes (it would run every candidate in
    NumPy). ``DIFFREC_AUTOTUNE=0`` switches autotuning off on CUDA too: the default candidate
    runs, which is what the compiled test run uses to avoid tuning every test shape.

Test overrides (:class:`Overrides`)
    Each kernel module has a ``force_config`` object, **for tests only**: inside
    ``with force_config(...)`` its launchers use the given configuration (or the CUDA default
    and the CUDA split logic, ``gpu=True``) instead of their normal choice, so the
    interpreter runs the paths that otherwise only CUDA takes.

bf16 in the interpreter
    The interpreter stores bfloat16 as raw 16-bit integers and cannot do arithmetic on it;
    it can only convert to and from float32, truncating on the way down. On CUDA the kernels
    feed bf16 tiles to the tensor cores (exact products, float32 accumulation) and round
    float32 results to bf16 to nearest-even. With ``EMULATE_BF16`` (set only when a bf16
    kernel is interpreted) the kernels keep bf16 *values* in float32 registers and round with
    :func:`round_bf16`, which reproduces those numerics up to summation order.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence

import torch
import triton
import triton.language as tl

AUTOTUNE_ENV = "DIFFREC_AUTOTUNE"
CUDA_SMS_FOR_TESTS = 132  # streaming multiprocessors assumed by ``force_config(gpu=True)`` off CUDA (an H100/H200)
SMEM_FOR_TESTS = 232448  # bytes of shared memory per block assumed off CUDA (H100/H200 opt-in maximum)
_SMEM_FALLBACK = 101376  # bytes assumed on a CUDA device whose limit cannot be read (sm_86's maximum)
_SMEM_MARGIN = 0.9  # keep estimates this far below the limit (layout conversions, reductions, barriers)


def autotune_enabled() -> bool:
    """False when ``DIFFREC_AUTOTUNE`` is 0/false/off/no (the default candidate then runs on CUDA)."""
    return os.environ.get(AUTOTUNE_ENV, "").strip().lower() not in ("0", "false", "off", "no")


class Overrides:
    """Test-only launch overrides of one kernel module; ``with overrides(name=value): ...``.

    Only the names given at construction are accepted. Values nest (an inner ``with`` adds to
    and then restores the outer values). Not thread-safe: meant for single-threaded tests.
    """

    def __init__(self, *names: str) -> None:
        self._names = frozenset(names)
        self._values: dict[str, object] = {}

    @contextlib.contextmanager
    def __call__(self, **values: object) -> Iterator[None]:
        unknown = sorted(set(values) - self._names)
        if unknown:
            raise TypeError(f"unknown override(s) {', '.join(unknown)}; accepted: {', '.join(sorted(self._names))}")
        saved = dict(self._values)
        self._values.update(values)
        try:
            yield
        finally:
            self._values = saved

    def get(self, name: str, default: object = None) -> object:
        return self._values.get(name, default)


def size_bucket(n: int) -> int:
    """A coarse size class (0: <= 64, 1: <= 1024, 2: <= 16384, 3: more) used in autotuning families."""
    for bucket, limit in enumerate((64, 1024, 16384)):
        if n <= limit:
            return bucket
    return 3


def multiprocessors(device: torch.device, overrides: Overrides) -> int | None:
    """Streaming multiprocessors to fill: the CUDA device's, or an assumed count under ``gpu=True``."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if overrides.get("gpu"):
        return int(overrides.get("sms", CUDA_SMS_FOR_TESTS))
    return None


def smem_budget(device: torch.device) -> int:
    """Bytes of shared memory a configuration may plan for on ``device`` (a margin below its limit)."""
    if device.type != "cuda":
        return int(SMEM_FOR_TESTS * _SMEM_MARGIN)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_smem_budget(index)


@functools.lru_cache(maxsize=None)
def _cuda_smem_budget(index: int) -> int:
    try:
        from triton.runtime import driver

        limit = int(driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except Exception:  # noqa: BLE001 - an older Triton or driver: stay conservative
        limit = _SMEM_FALLBACK
    return int(limit * _SMEM_MARGIN)


def fit_stages(
    configs: Sequence[triton.Config], estimate: Callable[[dict, int], int], budget: int
) -> list[triton.Config]:
    """Lower each candidate's ``num_stages`` until ``estimate(kwargs, stages)`` (bytes of shared
    memory) fits ``budget``; drop candidates that do not fit with one stage (keeping at least the
    smallest one), then duplicates. The order, hence the default (first), is kept."""
    fitted = []
    for cfg in configs:
        stages = cfg.num_stages
        while stages > 1 and estimate(cfg.kwargs, stages) > budget:
            stages -= 1
        if estimate(cfg.kwargs, stages) <= budget:
            fitted.append(triton.Config(dict(cfg.kwargs), num_warps=cfg.num_warps, num_stages=stages))
    if not fitted:
        smallest = min(configs, key=lambda cfg: estimate(cfg.kwargs, 1))
        fitted = [triton.Config(dict(smallest.kwargs), num_warps=smallest.num_warps, num_stages=1)]
    return unique_configs(fitted)


def unique_configs(configs: Sequence[triton.Config]) -> list[triton.Config]:
    """Drop repeated candidates (same block sizes, warps and stages), keeping the first."""
    seen, out = set(), []
    for cfg in configs:
        ident = (tuple(sorted(cfg.kwargs.items())), cfg.num_warps, cfg.num_stages)
        if ident not in seen:
            seen.add(ident)
            out.append(cfg)
    return out


def as_config(value: object) -> triton.Config:
    """A forced configuration: a ``triton.Config`` or a plain dict of block sizes."""
    if isinstance(value, triton.Config):
        return value
    if isinstance(value, dict):
        return triton.Config(dict(value))
    raise TypeError(f"a forced configuration must be a dict or a triton.Config, got {type(value).__name__}")


_TUNERS: dict[tuple, object] = {}


def launch(
    kernel,
    grid: tuple | Callable[[dict], tuple],
    args: Sequence[object],
    fixed: dict,
    configs: Sequence[triton.Config],
    *,
    family: tuple,
    key: Sequence[str],
    tune: bool,
) -> triton.Config:
    """Run ``kernel`` with ``fixed`` constexprs plus one of ``configs``; returns the configuration used.

    ``tune`` (CUDA only) autotunes over ``configs`` with one cached ``triton.autotune`` wrapper
    per ``(kernel, family, candidates)``; otherwise ``configs[0]`` runs. ``grid`` may be a function of
    the meta-parameters (the block sizes), as in Triton.
    """
    if tune and len(configs) > 1:
        candidates = tuple((tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages) for c in configs)
        tuner = _TUNERS.get((id(kernel), family, candidates))
        if tuner is None:
            tuner = triton.autotune(configs=list(configs), key=list(key))(kernel)
            _TUNERS[(id(kernel), family, candidates)] = tuner
        tuner[grid](*args, **fixed)
        return tuner.best_config
    cfg = configs[0]
    meta = dict(fixed, **cfg.kwargs)
    launch_grid = grid(meta) if callable(grid) else grid
    kernel[launch_grid](*args, **meta, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return cfg


def tuning_cache_clear() -> None:
    """Forget every autotuning result (tests; a new tuner is built on the next call)."""
    _TUNERS.clear()


# --------------------------------------------------------------------------------------------
# bf16 helpers (jit)
# --------------------------------------------------------------------------------------------


@triton.jit
def round_bf16(x):
    """float32 ``x`` rounded to the nearest bf16 value (ties to even), kept in float32.

    Used only when a bf16 kernel is interpreted (the interpreter's own fp32->bf16 cast
    truncates); finite inputs only.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def to_output(x, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """float32/float64 accumulator ``x`` cast to the output ``DTYPE`` (round to nearest-even)."""
    if EMULATE_BF16:
        x = round_bf16(x)
    return x.to(DTYPE)


@triton.jit
def to_operand(x, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """float32 ``x`` rounded to the matmul input ``DTYPE`` (under EMULATE_BF16: bf16 values in float32)."""
    if EMULATE_BF16:
        return round_bf16(x)
    return x.to(DTYPE)


@triton.jit
def load_rows(ptr, rows, row_mask, cols, dim, EMULATE_BF16: tl.constexpr):
    """The (len(rows), len(cols)) block ``ptr[rows, cols]`` of a row-major (n, dim) tensor, zeros
    outside ``row_mask`` and ``dim``; bf16 values in float32 registers under EMULATE_BF16 (exact)."""
    block = tl.load(
        ptr + rows[:, None].to(tl.int64) * dim + cols[None, :],
        mask=row_mask[:, None] & (cols < dim)[None, :], other=0.0,
    )
    if EMULATE_BF16:
        block = block.to(tl.float32)
    return block


@triton.jit
def chunked_dot(q_ptr, rows, row_mask, e_ptr, ids, item_mask, dim,
                BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """(BB, BN) float32 products q[rows] · e[ids] accumulated over d in chunks of BLOCK_K columns."""
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        q = load_rows(q_ptr, rows, row_mask, cols, dim, EMULATE_BF16)  # (BB, BK)
        e = load_rows(e_ptr, ids, item_mask, cols, dim, EMULATE_BF16)  # (BN, BK)
        acc = tl.dot(q, tl.trans(e), acc, input_precision=PRECISION, out_dtype=tl.float32)
    return acc
