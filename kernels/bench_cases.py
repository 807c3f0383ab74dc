"""What the kernel microbenchmarks run: the cases (sizes) per op, the providers, their inputs
and callables, the floor traffic and work of each case, and the backend each provider resolves to."""

from __future__ import annotations

from collections.abc import Callable

import torch

OPS = ("noise_inject", "inner_product_topk", "linear_cross_entropy")
_DTYPE = torch.float32
_TOPK_K = 20


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------


def _cases(op: str, device: str, quick: bool) -> list[dict]:
    gpu = device.startswith("cuda")
    if op == "noise_inject":
        if quick:
            shapes = [(256, 50, 128)] if not gpu else [(1024, 50, 128), (4096, 200, 128)]
        elif gpu:
            shapes = [(b, l, d) for b in (256, 1024, 4096) for l in (50, 200) for d in (64, 128, 256)]
        else:
            shapes = [(256, 50, 64), (256, 50, 128), (256, 50, 256), (1024, 50, 128)]
        return [dict(B=b, L=l, d=d) for b, l, d in shapes]
    if op == "inner_product_topk":
        if quick:
            shapes = [(512, 100_000, 128)] if not gpu else [(1024, 1_000_000, 128)]
        elif gpu:
            shapes = [(b, n, 128) for b in (1, 64, 1024, 4096) for n in (10_000, 100_000, 1_000_000, 10_000_000)]
            shapes += [(1024, 1_000_000, 64), (1024, 1_000_000, 256)]
        else:
            shapes = [(1, 100_000, 128), (64, 100_000, 128), (512, 10_000, 128), (512, 100_000, 128),
                      (512, 100_000, 64), (512, 100_000, 256), (512, 1_000_000, 128)]
        return [dict(B=b, N=n, d=d, K=_TOPK_K) for b, n, d in shapes]
    if op == "linear_cross_entropy":
        if quick:
            shapes = [(256, 100_000, 128)] if not gpu else [(1024, 1_000_000, 128)]
        elif gpu:
            shapes = [(b, n, 128) for b in (256, 1024, 4096) for n in (10_000, 100_000, 1_000_000)]
            shapes += [(1024, 1_000_000, 64), (1024, 1_000_000, 256)]
        else:
            shapes = [(256, 10_000, 128), (256, 100_000, 128), (1024, 100_000, 64), (256, 1_000_000, 64)]
        return [dict(B=b, N=n, d=d) for b, n, d in shapes]
    raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")


def _given_cases(op: str, shapes: list[tuple[int, int, int]]) -> list[dict]:
    if op == "noise_inject":
        return [dict(B=b, L=l, d=d) for b, l, d in shapes]
    return [dict(B=b, N=n, d=d, **({"K": _TOPK_K} if op == "inner_product_topk" else {})) for b, n, d in shapes]



def _providers(op: str, device: str) -> list[str]:
    cpu = not device.startswith("cuda")
    if op == "inner_product_topk":
        return ["diffrec", "diffrec-screen", "diffrec-noscreen", "diffrec-chunked", "faiss", "torch"] if cpu else ["diffrec", "torch"]
    return ["diffrec", "torch"]


def _modes(op: str) -> list[str]:
    return ["fwd"] if op == "inner_product_topk" else ["fwd", "bwd", "full"]


# --------------------------------------------------------------------------------------------
# the benchmarked callables
# --------------------------------------------------------------------------------------------


def _inputs(op: str, case: dict, device: str) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    kw = dict(device=device, dtype=_DTYPE, generator=gen)
    if op == "noise_inject":
        # h needs no gradient: dh = dz is a pass-through for every provider, and asking for it
        # would only time autograd's copy of dz into the leaf's .grad
        return dict(
            h=torch.randn(case["B"], case["L"], case["d"], **kw),
            x=torch.randn(case["B"], case["d"], **kw).requires_grad_(),
        )
    if op == "inner_product_topk":
        return dict(q=torch.randn(case["B"], case["d"], **kw), e=torch.randn(case["N"], case["d"], **kw))
    return dict(
        q=torch.randn(case["B"], case["d"], **kw).mul_(0.1).requires_grad_(),
        e=torch.randn(case["N"], case["d"], **kw).mul_(0.1).requires_grad_(),
        t=torch.randint(0, case["N"], (case["B"],), device=device, generator=gen),
    )


def _forward_fn(op: str, provider: str, inp: dict, case: dict) -> Callable[[], object]:
    """A zero-argument callable running the forward of ``provider`` (a loss/tensor for ops with backward)."""
    from . import inner_product_topk, linear_cross_entropy, noise_inject
    from .topk import chunked_topk, normalize_exclude

    if op == "noise_inject":
        h, x = inp["h"], inp["x"]
        if provider == "diffrec":
            return lambda: noise_inject(h, x, 0.001, 1234)
        return lambda: h + torch.normal(0.001, 0.001, size=h.shape, device=h.device, dtype=h.dtype) * x[:, None, :]
    if op == "inner_product_topk":
        q, e, k = inp["q"], inp["e"], case["K"]
        if provider == "diffrec":
            return lambda: inner_product_topk(q, e, k)
        if provider in ("diffrec-screen", "diffrec-noscreen"):
            from . import topk

            def screened(flag: bool = provider == "diffrec-screen"):
                default, topk.SCREEN_BF16 = topk.SCREEN_BF16, flag
                try:
                    return inner_product_topk(q, e, k)
                finally:
                    topk.SCREEN_BF16 = default

            return screened
        if provider == "diffrec-chunked":
            nothing = normalize_exclude(None, q.shape[0], e.shape[0], q.device)
            return lambda: chunked_topk(q, e, k, nothing)
        if provider == "faiss":
            import faiss

            index = faiss.IndexFlatIP(e.shape[1])
            index.add(e.numpy())
            qn = q.numpy()

            def search():
                default = faiss.cvar.distance_compute_blas_threshold
                faiss.cvar.distance_compute_blas_threshold = 0  # BLAS for every batch size
                try:
                    return index.search(qn, k)
                finally:
                    faiss.cvar.distance_compute_blas_threshold = default

            return search
        return lambda: torch.topk(q @ e.T, k, dim=1)
    q, e, t = inp["q"], inp["e"], inp["t"]
    if provider == "diffrec":
        return lambda: linear_cross_entropy(q, e, t)
    return lambda: torch.nn.functional.cross_entropy(q @ e.T, t)


def _mode_fn(op: str, provider: str, mode: str, inp: dict, case: dict) -> tuple[Callable[[], object], list]:
    """Return (callable to time, tensors whose .grad to reset) for a mode."""
    forward = _forward_fn(op, provider, inp, case)
    leaves = [t for t in inp.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode == "fwd":
        return forward, leaves
    out = forward()
    grad = torch.randn_like(out) if op == "noise_inject" else torch.ones_like(out)
    if mode == "bwd":
        return (lambda: out.backward(grad, retain_graph=True)), leaves
    return (lambda: forward().backward(grad)), leaves




def _floors(op: str, case: dict, mode: str) -> tuple[float, float]:
    """(bytes, FLOPs) that any implementation must move / compute."""
    size = torch.finfo(_DTYPE).bits // 8
    if op == "noise_inject":
        seq, vec = case["B"] * case["L"] * case["d"], case["B"] * case["d"]
        fwd, bwd = (2 * seq + vec) * size, (seq + vec) * size  # read h, x, write z | read dz, write dx
        return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode], 0.0
    b, n, d = case["B"], case["N"], case["d"]
    if op == "inner_product_topk":
        return (n * d + b * d) * size + b * case["K"] * 12, 2.0 * b * n * d
    fwd_bytes, bwd_bytes = (n * d + b * d) * size + 8 * b, 2 * (n * d + b * d) * size
    fwd_flops, bwd_flops = 2.0 * b * n * d, 4.0 * b * n * d
    return {
        "fwd": (fwd_bytes, fwd_flops),
        "bwd": (bwd_bytes, bwd_flops),
        "full": (fwd_bytes + bwd_bytes, fwd_flops + bwd_flops),
    }[mode]


def _backend_label(op: str, provider: str, device: str, case: dict) -> str:
    if provider in ("torch", "faiss"):
        return provider
    if provider == "diffrec-chunked":
        return "torch twin (chunked)"
    if provider == "diffrec-screen":
        return "torch twin (bf16 screen)"
    if provider == "diffrec-noscreen":
        return "torch twin (faiss)"
    from .dispatch import resolve_backend

    chosen = resolve_backend(None, torch.device(device), _DTYPE, op=op)
    if chosen == "torch" and op == "inner_product_topk" and device == "cpu":
        from .topk import _screen

        return "torch twin (bf16 screen)" if _screen(case["B"]) else "torch twin (faiss)"
    return chosen if chosen == "triton" else "torch twin"
