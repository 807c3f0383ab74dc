"""Whether Triton can be used, checked lazily so that importing diffrec.kernels never imports Triton.

Triton is an optional dependency (the project installs it on Linux x86_64 only). Its
interpreter (``TRITON_INTERPRET=1``) runs kernels on CPU tensors with NumPy; Triton decides
between the interpreter and the compiler when a kernel is *decorated*, which is why the
kernel modules (``_triton_*.py``) are imported only when a Triton backend is first used.
"""

from __future__ import annotations

import functools
import importlib


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when ``import triton`` succeeds (cached after the first call)."""
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is switched on (``TRITON_INTERPRET`` set to a true value)."""
    if not triton_available():
        return False
    from triton import knobs

    return bool(knobs.runtime.interpret)


def is_interpreted(kernel: object) -> bool:
    """True when a decorated kernel object runs in the interpreter rather than compiled."""
    return type(kernel).__name__ == "InterpretedFunction"
