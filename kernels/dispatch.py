"""Backend selection and shared input checks for the fused kernels.

Every op takes ``backend=None | "triton" | "torch"``. The choice is made in this order:

1. an explicit ``backend=`` argument wins;
2. otherwise the environment variable ``DIFFREC_KERNELS`` (``torch`` or ``triton``), when set
   and non-empty, decides for every call;
3. otherwise Triton is used for CUDA tensors (when Triton is installed and supports the
   dtype) and the PyTorch twin for everything else.

The Triton backend accepts CUDA tensors, and CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1``, meant for tests); anything else raises :class:`BackendUnavailableError`.

Autocast: inside a ``torch.autocast`` region for the tensors' device type the public ops cast
their inputs first (:func:`autocast_lower` for the matmul ops, :func:`autocast_promote` for the
element-wise noise injection), then run their forward and backward with autocast switched off
(:func:`autocast_disabled`), as ``torch.amp.custom_fwd(cast_inputs=...)`` / ``custom_bwd`` do;
gradients flow back through the casts, so they arrive in the dtypes of the original inputs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch

from diffrec.errors import DiffrecError

from ._triton_available import interpreter_enabled, triton_available

BACKENDS = ("triton", "torch")
ENV_VAR = "DIFFREC_KERNELS"

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class KernelInputError(DiffrecError, ValueError):
    """Bad arguments to a kernel (shape, dtype, device, range); raised before any kernel runs."""


class BackendUnavailableError(DiffrecError, RuntimeError):
    """The requested backend cannot run these tensors here (no Triton, no interpreter, unsupported dtype)."""


def _env_backend() -> str | None:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise KernelInputError(f"{ENV_VAR}={value!r} is not a backend; use one of {', '.join(BACKENDS)}")
    return value


def resolve_backend(
    backend: str | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    op: str,
    triton_dtypes: Iterable[torch.dtype] = FLOAT_DTYPES,
) -> str:
    """Return ``"triton"`` or ``"torch"`` for an op on tensors of ``device`` and ``dtype``.

    Raises :class:`KernelInputError` for an unknown backend name and
    :class:`BackendUnavailableError` when Triton was asked for but cannot run here.
    """
    triton_dtypes = tuple(triton_dtypes)
    if backend is not None and backend not in BACKENDS:
        raise KernelInputError(f"{op}: backend must be None, 'triton' or 'torch', got {backend!r}")
    chosen = backend if backend is not None else _env_backend()
    if chosen is None:
        auto_triton = device.type == "cuda" and dtype in triton_dtypes and triton_available()
        return "triton" if auto_triton else "torch"
    if chosen == "torch":
        return "torch"
    if not triton_available():
        raise BackendUnavailableError(f"{op}: backend='triton' needs the triton package, which is not installed")
    if dtype not in triton_dtypes:
        names = ", ".join(str(t).removeprefix("torch.") for t in triton_dtypes)
        raise BackendUnavailableError(
            f"{op}: the Triton kernel supports {names}, not {str(dtype).removeprefix('torch.')}; use backend='torch'"
        )
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu":
        if interpreter_enabled():
            return "triton"
        raise BackendUnavailableError(
            f"{op}: backend='triton' got CPU tensors; Triton runs on CPU only in its interpreter "
            "(set TRITON_INTERPRET=1 before the first Triton call) - use backend='torch' or CUDA tensors"
        )
    raise BackendUnavailableError(f"{op}: backend='triton' does not support device {device}")


def check_float_tensor(name: str, t: object, ndim: int, op: str) -> torch.Tensor:
    """Check that ``t`` is a floating-point tensor with ``ndim`` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise KernelInputError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise KernelInputError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    return t


def check_same(op: str, **tensors: torch.Tensor) -> None:
    """Check that the named tensors share one dtype and one device."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise KernelInputError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}")
        if t.dtype != first.dtype:
            raise KernelInputError(f"{op}: {name} has dtype {t.dtype} but {first_name} has {first.dtype}")


def check_int(op: str, name: str, value: object, *, low: int, high: int | None = None) -> int:
    """Check that ``value`` is a Python int (or 0-d integer tensor) in ``[low, high]``."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, int):
        raise KernelInputError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise KernelInputError(f"{op}: {name} must be {bound}, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# autocast
# --------------------------------------------------------------------------------------------


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype of the enabled ``torch.autocast`` region for ``device``'s type, or None outside one."""
    kind = device.type
    try:
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
    except (RuntimeError, TypeError, ValueError):  # a device type autocast does not know (e.g. meta)
        pass
    return None


@contextlib.contextmanager
def autocast_disabled(device: torch.device) -> Iterator[None]:
    """Run the body with autocast off for ``device``'s type (a no-op outside an autocast region)."""
    if autocast_dtype(device) is None:
        yield
        return
    with torch.autocast(device.type, enabled=False):
        yield


def autocast_lower(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Inside autocast (for the first tensor's device type): cast float16/bfloat16/float32 tensors to
    the autocast dtype, as autocast does for a matmul; float64 tensors and everything outside an
    autocast region are returned unchanged."""
    dtype = autocast_dtype(tensors[0].device)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t.dtype in (torch.float16, torch.bfloat16, torch.float32) else t for t in tensors)


def autocast_promote(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Inside autocast (for the first tensor's device type): cast the tensors to their promoted
    common dtype, as PyTorch's element-wise ops do under autocast; unchanged outside a region."""
    if autocast_dtype(tensors[0].device) is None:
        return tensors
    common = tensors[0].dtype
    for t in tensors[1:]:
        common = torch.promote_types(common, t.dtype)
    return tuple(t.to(common) for t in tensors)
