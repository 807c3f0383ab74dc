"""Linear cross-entropy over a whole catalogue without materialising the B×N logits.

``linear_cross_entropy(queries, items, targets, reduction=...)`` equals
``torch.nn.functional.cross_entropy(queries @ items.T, targets, reduction=...)`` (``"mean"``,
``"sum"`` or ``"none"``: each row's loss, for samplers that learn from them), with gradients
for ``queries`` and ``items``. The log-sum-exp is accumulated online over item
tiles; the backward recomputes each tile's logits from the saved inputs and the per-row
log-sum-exp, so extra memory is O(B·chunk) (PyTorch twin) or O(B + N·d) (Triton) instead of
O(B·N).

Logits and the loss are computed in float32 (float64 for float64 inputs); the loss is
returned in that precision, the gradients in the dtypes of the inputs.
"""

from __future__ import annotations

import torch

from .dispatch import (
    KernelInputError,
    autocast_disabled,
    autocast_lower,
    check_float_tensor,
    check_same,
    resolve_backend,
)

_OP = "linear_cross_entropy"
_CHUNK_ELEMENTS = 1 << 22  # B·chunk logits per step of the PyTorch twin (16 MiB in float32)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of logits and loss for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_size(n_queries: int, n_items: int, chunk: int | None) -> int:
    if chunk is None:
        chunk = max(256, _CHUNK_ELEMENTS // max(1, n_queries))
    return max(1, min(chunk, n_items))


def chunked_logsumexp(queries: torch.Tensor, items: torch.Tensor, chunk: int) -> torch.Tensor:
    """Row-wise log-sum-exp of ``queries @ items.T`` (both already in the compute dtype), chunk by chunk."""
    buffer = queries.new_empty((queries.shape[0], chunk))  # (B, chunk), reused
    lse = queries.new_full((queries.shape[0],), float("-inf"))  # (B,)
    for start in range(0, items.shape[0], chunk):
        block = items[start : start + chunk]  # (c, d)
        logits = buffer[:, : block.shape[0]]  # (B, c)
        torch.matmul(queries, block.T, out=logits)
        peak = logits.amax(dim=1, keepdim=True)  # (B, 1)
        total = logits.sub_(peak).exp_().sum(dim=1)  # (B,)
        lse = torch.logaddexp(lse, total.log_().add_(peak.squeeze(1)))
    return lse


class TorchLinearCrossEntropy(torch.autograd.Function):
    """PyTorch twin: chunked online log-sum-exp forward, chunk-recomputing backward."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        compute = compute_dtype(queries.dtype)
        q = queries.detach().to(compute)  # (B, d)
        e = items.detach().to(compute)  # (N, d)
        lse = chunked_logsumexp(q, e, chunk)  # (B,)
        target_logit = (q * e[targets]).sum(dim=1)  # (B,)
        ctx.save_for_backward(queries, items, targets, lse)
        ctx.chunk = chunk
        return lse - target_logit  # (B,) each row's loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        with autocast_disabled(grad.device):
            return TorchLinearCrossEntropy._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: torch.Tensor):
        queries, items, targets, lse = ctx.saved_tensors
        compute = lse.dtype
        q, e = queries.to(compute), items.to(compute)
        n_queries = q.shape[0]
        scale = grad.to(compute)[:, None]  # (B, 1) upstream gradient per row
        need_q, need_e = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dq = torch.zeros_like(q) if need_q else None  # (B, d)
        de = torch.empty_like(e) if need_e else None  # (N, d)
        buffer = q.new_empty((n_queries, ctx.chunk))  # (B, chunk), reused
        for start in range(0, e.shape[0], ctx.chunk):
            block = e[start : start + ctx.chunk]  # (c, d)
            probs = buffer[:, : block.shape[0]]  # (B, c)
            torch.matmul(q, block.T, out=probs)
            probs.sub_(lse[:, None]).exp_().mul_(scale)  # softmax · g_b
            if need_q:
                dq.addmm_(probs, block)
            if need_e:
                torch.matmul(probs.T, q, out=de[start : start + block.shape[0]])
        if need_q:
            dq.sub_(e[targets] * scale)
            dq = dq.to(queries.dtype)
        if need_e:
            de.index_add_(0, targets, q * -scale)
            de = de.to(items.dtype)
        return dq, de, None, None


def check_inputs(queries: object, items: object, targets: object) -> None:
    """Validate shapes, dtypes, devices and the target range (one device sync for the range)."""
    check_float_tensor("queries", queries, 2, _OP)
    check_float_tensor("items", items, 2, _OP)
    check_same(_OP, queries=queries, items=items)
    if items.shape[1] != queries.shape[1]:
        raise KernelInputError(f"{_OP}: queries have d={queries.shape[1]} but items have d={items.shape[1]}")
    if not isinstance(targets, torch.Tensor):
        raise KernelInputError(f"{_OP}: targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise KernelInputError(f"{_OP}: targets must be int64, got {targets.dtype}")
    if targets.shape != (queries.shape[0],):
        raise KernelInputError(f"{_OP}: targets must have shape ({queries.shape[0]},), got {tuple(targets.shape)}")
    if targets.device != queries.device:
        raise KernelInputError(f"{_OP}: targets are on {targets.device} but queries are on {queries.device}")
    if queries.shape[0] == 0:
        raise KernelInputError(f"{_OP}: the batch is empty")
    if items.shape[0] == 0:
        raise KernelInputError(f"{_OP}: there are no items")
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= items.shape[0]:
        bad = low if low < 0 else high
        raise KernelInputError(f"{_OP}: target {bad} is outside [0, {items.shape[0]})")


REDUCTIONS = ("mean", "sum", "none")


def linear_cross_entropy(
    queries: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``queries @ items.T`` against ``targets``, without B×N logits.

    Args:
        queries: (B, d) float tensor, B >= 1.
        items: (N, d) float tensor, same dtype and device.
        targets: (B,) int64 in [0, N) (no ignore_index).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (the (B,) row losses).
        backend: ``"triton"``, ``"torch"`` or None (see :mod:`diffrec.kernels.dispatch`).

    Returns:
        The loss (0-d, or (B,) for ``"none"``) in float32 (float64 for float64 inputs),
        differentiable in ``queries`` and ``items``. Triton copies non-contiguous inputs; fp32 matmuls follow
        ``torch.get_float32_matmul_precision()`` on GPU.

    Under ``torch.autocast`` (for the device of ``queries``) float16/bfloat16/float32 inputs are
    first cast to the autocast dtype, as autocast does for ``queries @ items.T`` (so they may
    differ in dtype); the logits are still accumulated and the loss returned in float32, and
    the gradients come back in the dtypes of the original inputs (rounded through the
    autocast dtype, as autocast's own matmul gradients are).

    Raises:
        KernelInputError (ValueError): bad shapes, dtypes, devices or a target out of range.
    """
    if reduction not in REDUCTIONS:
        raise KernelInputError(f"{_OP}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    check_float_tensor("queries", queries, 2, _OP)
    check_float_tensor("items", items, 2, _OP)
    queries, items = autocast_lower(queries, items)
    check_inputs(queries, items, targets)
    chosen = resolve_backend(backend, queries.device, queries.dtype, op=_OP, triton_dtypes=TRITON_DTYPES)
    with autocast_disabled(queries.device):
        if chosen == "triton":
            from ._triton_linear_ce import TritonLinearCrossEntropy

            rows = TritonLinearCrossEntropy.apply(queries, items, targets)  # (B,)
        else:
            chunk = _chunk_size(queries.shape[0], items.shape[0], None)
            rows = TorchLinearCrossEntropy.apply(queries, items, targets, chunk)  # (B,)
        if reduction == "none":
            return rows
        return rows.mean() if reduction == "mean" else rows.sum()
