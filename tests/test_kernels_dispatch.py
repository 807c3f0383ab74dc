"""Backend selection, the DIFFREC_KERNELS override, working without Triton, and the benchmark table."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from diffrec.kernels import (
    BackendUnavailableError,
    KernelInputError,
    dispatch,
    resolve_backend,
)

from diffrec import kernels

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv("DIFFREC_KERNELS", raising=False)


def test_automatic_choice(monkeypatch):
    assert resolve_backend(None, CPU, torch.float32, op="t") == "torch"
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert resolve_backend(None, CUDA, torch.float32, op="t") == "triton"
    assert resolve_backend(None, CUDA, torch.float64, op="t", triton_dtypes=(torch.float32,)) == "torch"
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert resolve_backend(None, CUDA, torch.float32, op="t") == "torch"


def test_environment_overrides_the_automatic_choice_only(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(dispatch, "interpreter_enabled", lambda: True)
    monkeypatch.setenv("DIFFREC_KERNELS", "torch")
    assert resolve_backend(None, CUDA, torch.float32, op="t") == "torch"
    assert resolve_backend("triton", CUDA, torch.float32, op="t") == "triton"
    monkeypatch.setenv("DIFFREC_KERNELS", " Triton ")
    assert resolve_backend(None, CPU, torch.float32, op="t") == "triton"
    monkeypatch.setenv("DIFFREC_KERNELS", "cuda")
    with pytest.raises(KernelInputError, match="DIFFREC_KERNELS"):
        resolve_backend(None, CPU, torch.float32, op="t")


def test_explicit_triton_needs_triton_and_cuda_or_interpreter(monkeypatch):
    with pytest.raises(KernelInputError, match="backend must be"):
        resolve_backend("cuda", CPU, torch.float32, op="t")
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        resolve_backend("triton", CUDA, torch.float32, op="t")
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(dispatch, "interpreter_enabled", lambda: False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", CPU, torch.float32, op="t")
    with pytest.raises(BackendUnavailableError, match="float64"):
        resolve_backend("triton", CUDA, torch.float64, op="t", triton_dtypes=(torch.float32,))
    with pytest.raises(BackendUnavailableError, match="device meta"):
        resolve_backend("triton", torch.device("meta"), torch.float32, op="t")
    monkeypatch.setattr(dispatch, "interpreter_enabled", lambda: True)
    assert resolve_backend("triton", CPU, torch.float32, op="t") == "triton"


def test_ops_raise_clearly_for_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(dispatch, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        kernels.noise_inject(torch.zeros(1, 2, 3), torch.zeros(1, 3), 0.1, 0, backend="triton")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        kernels.inner_product_topk(torch.zeros(1, 3), torch.zeros(4, 3), 2, backend="triton")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        kernels.linear_cross_entropy(torch.zeros(1, 3), torch.zeros(4, 3), torch.zeros(1, dtype=torch.long),
                                     backend="triton")


def test_environment_selects_torch_for_ops(monkeypatch):
    monkeypatch.setenv("DIFFREC_KERNELS", "torch")
    _scores, ids = kernels.inner_product_topk(torch.eye(3), torch.eye(3), 1)
    assert torch.equal(ids.squeeze(1), torch.arange(3))


def test_errors_are_value_errors_and_diffrec_errors():
    from diffrec.errors import DiffrecError

    assert issubclass(KernelInputError, ValueError) and issubclass(KernelInputError, DiffrecError)
    assert issubclass(BackendUnavailableError, RuntimeError) and issubclass(BackendUnavailableError, DiffrecError)


def test_import_has_no_triton_side_effect_and_works_without_triton():
    script = (
        "import sys\n"
        "import diffrec.kernels as k\n"
        "assert 'triton' not in sys.modules, 'importing diffrec.kernels imported triton'\n"
        "sys.modules['triton'] = None  # as if triton were not installed\n"
        "import torch\n"
        "assert not k.triton_available()\n"
        "z = k.noise_inject(torch.zeros(2, 3, 4), torch.ones(2, 4), 0.1, 1)\n"
        "s, i = k.inner_product_topk(torch.eye(4), torch.eye(4), 2, exclude=0)\n"
        "loss = k.linear_cross_entropy(torch.eye(4), torch.eye(4), torch.arange(4))\n"
        "try:\n"
        "    k.inner_product_topk(torch.eye(4), torch.eye(4), 2, backend='triton')\n"
        "except k.BackendUnavailableError as err:\n"
        "    assert 'not installed' in str(err)\n"
        "else:\n"
        "    raise AssertionError('no error without triton')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_benchmark_table_rendering():
    from diffrec.kernels import bench
    from rich.console import Console

    rows = [
        dict(op="inner_product_topk", provider=p, backend=p, mode="fwd", B=512, N=100_000, d=128, K=20,
             dtype="float32", device="cpu", median_ms=t, peak_mib=1.5, mem_method="m", gbps=1.0, tflops=0.1,
             speedup=s, note="")
        for p, t, s in (("diffrec", 50.0, 2.0), ("torch", 100.0, 1.0))
    ]
    rows.append(dict(rows[0], op="noise_inject", L=50, N=None, K=None, median_ms=None, speedup=None,
                     note="out of memory"))
    del rows[-1]["N"], rows[-1]["K"]
    buffer = io.StringIO()
    bench.print_table(rows, console=Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "inner_product_topk" in text and "noise_inject" in text and "out of memory" in text
    markdown = bench.rows_to_markdown(rows)
    assert markdown.count("\n") == len(rows) + 1 and "B=512 N=1e5 d=128 K=20" in markdown
    for op in bench.OPS:
        assert bench._cases(op, "cpu", quick=True) and bench._cases(op, "cuda", quick=False)
    with pytest.raises(ValueError, match="unknown op"):
        bench.run_benchmarks(["nope"], "cpu", quick=True)
