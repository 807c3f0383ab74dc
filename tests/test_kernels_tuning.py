"""Launch configurations of the Triton kernels (CUDA candidates, interpreter configs, test overrides),
the autocast helpers, the benchmark target lines, and - on CUDA only - the autotuned launches."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import kernel_device
from diffrec.kernels import dispatch, inner_product_topk, linear_cross_entropy, noise_inject


def _modules():
    kernel_device("triton")  # skips without Triton
    from diffrec.kernels import _triton_common, _triton_linear_ce, _triton_noise, _triton_topk

    return _triton_common, _triton_noise, _triton_topk, _triton_linear_ce


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


# --------------------------------------------------------------------------------------------
# CUDA candidates (host-side decisions, checked without a GPU)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 16, 37, 64, 128, 200, 256, 512, 1000, 1024])
@pytest.mark.parametrize("elt", [2, 4])
def test_matmul_candidates_fit_and_never_hold_a_wide_row(dim, elt):
    common, _, topk, lce = _modules()
    d_pad = max(16, 1 << (dim - 1).bit_length())
    budget = int(common.SMEM_FOR_TESTS * 0.9)
    lists = {("topk", k, b): topk.cuda_configs(k, dim, b, elt) for k in (1, 20, 64, 100, 256) for b in (1, 64, 4096)}
    lists.update({(kernel, 0, b): lce.cuda_configs(kernel, b, dim, elt) for kernel in ("fwd", "bwd_q", "bwd_e")
                  for b in (1, 64, 4096)})
    for (kernel, k, batch), configs in lists.items():
        assert configs, (kernel, k, batch)
        idents = [(tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages) for c in configs]
        assert len(set(idents)) == len(idents)
        for cfg in configs:
            meta = cfg.kwargs
            assert all(_power_of_two(v) and v >= 16 for v in meta.values()), meta  # tl.dot needs >= 16
            assert meta["BLOCK_N"] <= topk.SPLIT_GRANULE == lce.SPLIT_GRANULE  # splits stay whole tiles
            assert meta["BLOCK_K"] * elt <= 512 or meta["BLOCK_K"] == 64  # d = 512/1024 never in one block
            assert cfg.num_warps in (4, 8) and 1 <= cfg.num_stages <= 4
            if kernel == "topk":
                assert topk.smem_estimate(meta, cfg.num_stages, elt, d_pad) <= budget
                kp = 1 << (k - 1).bit_length()
                assert meta["BLOCK_B"] <= (128 if kp <= 32 else 32 if kp <= 64 else 16)  # K slots in registers
            else:
                assert lce.smem_estimate(kernel, meta, cfg.num_stages, elt, d_pad) <= budget
                assert ("BLOCK_DO" in meta) == (kernel != "fwd")
                if kernel != "fwd" and meta["BLOCK_K"] >= d_pad:
                    assert meta["BLOCK_DO"] == meta["BLOCK_K"]  # one column block when d is whole
    # the defaults keep d whole exactly while a row takes at most 512 bytes
    whole = d_pad * elt <= 512
    assert (topk.cuda_configs(20, dim, 1024, elt)[0].kwargs["BLOCK_K"] >= d_pad) == whole
    assert (lce.cuda_configs("bwd_q", 1024, dim, elt)[0].kwargs["BLOCK_K"] >= d_pad) == whole


def test_defaults_keep_the_previous_block_sizes_for_common_shapes():
    _, noise, topk, lce = _modules()
    assert topk.cuda_configs(20, 128, 1024, 4)[0].kwargs == {"BLOCK_B": 64, "BLOCK_N": 64, "BLOCK_K": 128}
    assert topk.cuda_configs(100, 64, 1024, 4)[0].kwargs["BLOCK_B"] == 16
    assert lce.cuda_configs("fwd", 1024, 128, 4)[0].kwargs == {"BLOCK_B": 64, "BLOCK_N": 64, "BLOCK_K": 128}
    assert lce.cuda_configs("fwd", 8, 64, 4)[0].kwargs["BLOCK_B"] == 16
    # d = 1024 in float32: 64-column chunks, 128-column gradient blocks, 8 warps
    bwd_e = lce.cuda_configs("bwd_e", 1024, 1024, 4)[0]
    assert bwd_e.kwargs == {"BLOCK_B": 64, "BLOCK_N": 32, "BLOCK_K": 64, "BLOCK_DO": 128} and bwd_e.num_warps == 8
    assert topk.cuda_configs(20, 1024, 1024, 4)[0].num_warps == 8
    for d in (1, 37, 128, 1024):
        for configs in (noise.fwd_configs(d), noise.bwd_configs(d)):
            assert configs and all(_power_of_two(c.kwargs["ROWS"]) for c in configs)


def test_fit_stages_lowers_stages_then_drops():
    common, _, topk, _ = _modules()
    import triton

    configs = [triton.Config({"BLOCK_B": 64, "BLOCK_N": 128, "BLOCK_K": 256}, num_warps=8, num_stages=4),
               triton.Config({"BLOCK_B": 16, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3)]
    estimate = lambda meta, stages: topk.smem_estimate(meta, stages, 4, 256)  # noqa: E731
    fitted = common.fit_stages(configs, estimate, 200_000)
    assert [c.num_stages for c in fitted] == [1, 3]  # 64x128x256 fp32 fits with one stage only
    fitted = common.fit_stages(configs, estimate, 60_000)
    assert len(fitted) == 1 and fitted[0].kwargs["BLOCK_B"] == 16
    assert common.fit_stages(configs, estimate, 10)[0].num_stages == 1  # nothing fits: the smallest, 1 stage


def test_size_buckets_and_autotune_switch(monkeypatch):
    common, *_ = _modules()
    assert [common.size_bucket(n) for n in (0, 64, 65, 1024, 1025, 16384, 16385, 10**9)] == [0, 0, 1, 1, 2, 2, 3, 3]
    monkeypatch.delenv(common.AUTOTUNE_ENV, raising=False)
    assert common.autotune_enabled()
    for off in ("0", "false", "OFF", " no "):
        monkeypatch.setenv(common.AUTOTUNE_ENV, off)
        assert not common.autotune_enabled()
    monkeypatch.setenv(common.AUTOTUNE_ENV, "1")
    assert common.autotune_enabled()


def test_overrides_accept_known_names_nest_and_restore():
    _, noise, topk, lce = _modules()
    with pytest.raises(TypeError, match="unknown override"):
        with topk.force_config(block_size=3):
            pass
    with lce.force_config(gpu=True, splits=3):
        with lce.force_config(splits=5):
            assert lce.force_config.get("splits") == 5 and lce.force_config.get("gpu")
        assert lce.force_config.get("splits") == 3
    assert lce.force_config.get("splits") is None and not lce.force_config.get("gpu")
    with noise.force_config(counter_bits=64):
        assert noise.choose_counter_bits(10, 10) == 64
    assert noise.choose_counter_bits(10, 10) == 32


def test_interpreter_runs_fixed_configs_and_gpu_override_the_cuda_defaults(monkeypatch):
    """Off CUDA nothing is autotuned; ``gpu=True`` selects the CUDA default and CUDA's split count."""
    common, _, topk, lce = _modules()
    from diffrec.kernels import interpreter_enabled

    if not interpreter_enabled():
        pytest.skip("checks the interpreter's fixed configurations")
    calls = []
    real_launch = common.launch

    def spy(kernel, grid, args, fixed, configs, **kw):
        calls.append((kw["family"][0], kw["tune"], configs[0].kwargs))
        return real_launch(kernel, grid, args, fixed, configs, **kw)

    monkeypatch.setattr(topk, "launch", spy)
    monkeypatch.setattr(lce, "launch", spy)
    device = kernel_device("triton")
    queries, items = torch.randn(40, 32, device=device), torch.randn(500, 32, device=device)
    inner_product_topk(queries, items, 5, backend="triton")
    with topk.force_config(gpu=True):
        inner_product_topk(queries, items, 5, backend="triton")
    assert [c[0] for c in calls] == ["topk", "topk"] and not any(c[1] for c in calls)
    assert calls[0][2]["BLOCK_N"] == 128 and calls[1][2] == topk.cuda_configs(5, 32, 40)[0].kwargs
    calls.clear()
    targets = torch.randint(0, 500, (40,))
    linear_cross_entropy(queries.requires_grad_(), items, targets, backend="triton").backward()
    assert [c[0] for c in calls] == ["lce_fwd", "lce_bwd_q"] and not any(c[1] for c in calls)


# --------------------------------------------------------------------------------------------
# autocast helpers
# --------------------------------------------------------------------------------------------


def test_autocast_helpers():
    cpu = torch.device("cpu")
    f32, b16, f64 = torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.float64)
    assert dispatch.autocast_dtype(cpu) is None
    assert dispatch.autocast_dtype(torch.device("meta")) is None
    assert dispatch.autocast_lower(f32, b16) == (f32, b16) and dispatch.autocast_promote(f32, b16) == (f32, b16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dispatch.autocast_dtype(cpu) == torch.bfloat16
        assert [t.dtype for t in dispatch.autocast_lower(f32, b16, f64)] == [torch.bfloat16, torch.bfloat16, torch.float64]
        assert [t.dtype for t in dispatch.autocast_promote(b16, f32)] == [torch.float32, torch.float32]
        with dispatch.autocast_disabled(cpu):
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")
    with dispatch.autocast_disabled(torch.device("meta")):
        pass


# --------------------------------------------------------------------------------------------
# benchmark target lines (what benchmarks/run_gpu.sh prints)
# --------------------------------------------------------------------------------------------


def _row(op, provider, mode, median_ms, **case):
    return dict(op=op, provider=provider, backend=provider, mode=mode, dtype="float32", device="cuda:0",
                median_ms=median_ms, peak_mib=case.pop("peak_mib", None), mem_method=None,
                gbps=case.pop("gbps", None), tflops=None, speedup=None, note=case.pop("note", ""), **case)


def test_target_lines_name_op_size_time_value_and_verdict(tmp_path, capsys):
    from diffrec.kernels import bench

    topk_case = dict(B=1024, N=1_000_000, d=128, K=20)
    noise_case = dict(B=1024, L=50, d=128)
    lce_case = dict(B=1024, N=1_000_000, d=128)
    rows = [
        _row("inner_product_topk", "diffrec", "fwd", 2.0, **topk_case),
        _row("inner_product_topk", "torch", "fwd", 8.0, **topk_case),
        _row("noise_inject", "diffrec", "full", 0.5, gbps=3000.0, **noise_case),
        _row("noise_inject", "torch", "full", 0.75, gbps=2000.0, **noise_case),
        _row("linear_cross_entropy", "diffrec", "full", 30.0, peak_mib=100.0, **lce_case),
        _row("linear_cross_entropy", "torch", "full", None, note="out of memory", **lce_case),
    ]
    lines = bench.target_summary(rows, peak_gbps=4000.0)
    assert len(lines) == 5 and all(line.startswith("TARGET ") for line in lines)
    topk_line, bandwidth, noise_speed, lce_memory, lce_time = lines
    assert "inner_product_topk B=1024 N=1e6 d=128 K=20" in topk_line and "2.000 ms" in topk_line
    assert "speedup 4.00x" in topk_line and topk_line.endswith("-> met")
    assert "75% of 4000 GB/s" in bandwidth and bandwidth.endswith("-> MISSED")
    assert "speedup 1.50x" in noise_speed and noise_speed.endswith("-> MISSED")
    assert "out of memory" in lce_memory and lce_memory.endswith("-> n/a") and lce_time.endswith("-> n/a")
    assert bench.target_summary(rows)[1].endswith("-> n/a")  # no peak bandwidth known
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([dict(r, peak_gbps=4000.0) for r in rows]))
    assert bench.main(["--summarize", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == lines


# --------------------------------------------------------------------------------------------
# CUDA only: the autotuned launches (run by benchmarks/run_gpu.sh)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autotuning runs on CUDA only")
def test_autotuned_launches_on_cuda(monkeypatch):
    common, _, topk, lce = _modules()
    from diffrec.kernels import interpreter_enabled

    if interpreter_enabled():
        pytest.skip("the kernels are interpreted in this process")
    monkeypatch.setenv(common.AUTOTUNE_ENV, "1")
    common.tuning_cache_clear()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(300, 200, device="cuda", generator=gen)
    e = torch.randn(5000, 200, device="cuda", generator=gen)
    scores, ids = inner_product_topk(q, e, 20, backend="triton")
    twin_scores, _ = inner_product_topk(q, e, 20, backend="torch")
    torch.testing.assert_close(scores, twin_scores, rtol=1e-4, atol=1e-4)  # IEEE fp32 ("highest" precision)
    q.requires_grad_()
    e.requires_grad_()
    targets = torch.randint(0, 5000, (300,), device="cuda", generator=gen)
    loss = linear_cross_entropy(q * 0.1, e, targets, backend="triton")
    loss.backward()
    twin = linear_cross_entropy(q.detach() * 0.1, e.detach(), targets, backend="torch")
    torch.testing.assert_close(loss, twin, rtol=1e-3, atol=1e-3)
    h = torch.randn(64, 50, 128, device="cuda", generator=gen)
    x = torch.randn(64, 128, device="cuda", generator=gen, requires_grad=True)
    z = noise_inject(h, x, 0.1, 3, backend="triton")
    (dx,) = torch.autograd.grad(z, (x,), torch.ones_like(z))
    lam = noise_inject(torch.zeros_like(h), torch.ones_like(x), 0.1, 3, backend="triton")
    torch.testing.assert_close(dx, lam.sum(dim=1), rtol=1e-5, atol=1e-4)
    families = {key[1][0] for key in common._TUNERS}
    assert {"topk", "lce_fwd", "lce_bwd_q", "lce_bwd_e", "noise_fwd", "noise_bwd"} <= families


# --------------------------------------------------------------------------------------------
# compiled for a GPU without a GPU: the default configurations go through Triton's compiler
# (frontend, sm_90 code generation, ptxas), which the interpreter never exercises
# --------------------------------------------------------------------------------------------

_COMPILE_SCRIPT = r'''
import json, sys
import torch, triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from diffrec.kernels import _triton_linear_ce as L, _triton_noise as N, _triton_topk as T

TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.int64: "*i64", torch.int8: "*i8"}
target = GPUTarget("cuda", 90, 32)
report = []

def build(label, fn, args, fixed, cfg):
    meta = dict(fixed, **cfg.kwargs)
    signature = {}
    for name, arg in zip(fn.arg_names, args):
        signature[name] = TYPES[arg] if isinstance(arg, torch.dtype) else ("fp32" if isinstance(arg, float) else "i32")
    signature.update({name: "constexpr" for name in meta})
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=meta), target=target,
                              options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    report.append([label, compiled.metadata.shared])

f32, bf16, i64, i8 = torch.float32, torch.bfloat16, torch.int64, torch.int8
for d, wide in ((128, False), (1024, True)):
    q, _ = N.philox_layout(d)
    fixed = dict(Q=q, WIDE=wide, COMPUTE=N._compute_dtype(f32), EMULATE_BF16=False)
    build(f"noise_fwd d={d}", N._noise_fwd_kernel, (f32, f32, f32, 1000, 50, d, 0.1, 7), fixed, N.fwd_configs(d)[0])
    build(f"noise_bwd d={d}", N._noise_bwd_x_kernel, (f32, f32, 50, d, 0.1, 7), fixed, N.bwd_configs(d)[0])
for d, dt in ((128, f32), (1024, f32), (256, bf16)):
    fixed = dict(K=20, KP=32, D_PAD=T._feature_pad(d), HAS_MASK=True, HAS_EXCL=True, EXCL_CHUNK=16,
                 EMULATE_BF16=False, PRECISION="tf32" if dt == f32 else "ieee")
    build(f"topk d={d} {dt}", T._topk_kernel, (dt, dt, i64, i8, i64, 1024, 10**6, d, 30, 4096), fixed,
          T.cuda_configs(20, d, 1024, dt.itemsize)[0])
for d in (128, 1024):
    fixed = dict(D_PAD=L._feature_pad(d), EMULATE_BF16=False, PRECISION="tf32")
    build(f"lce_fwd d={d}", L._lce_fwd_kernel, (f32, f32, i64, f32, f32, f32, 1024, 10**6, d, 4096), fixed,
          L.cuda_configs("fwd", 1024, d)[0])
    build(f"lce_bwd_q d={d}", L._lce_bwd_q_kernel, (f32, f32, i64, f32, f32, f32, 1024, 10**6, d, 4096, 0.001),
          fixed, L.cuda_configs("bwd_q", 1024, d)[0])
    build(f"lce_bwd_e d={d}", L._lce_bwd_e_kernel, (f32, f32, i64, f32, f32, f32, 1024, 10**6, d, 0.001), fixed,
          L.cuda_configs("bwd_e", 1024, d)[0])
print(json.dumps(report))
'''


def test_default_configurations_compile_for_sm90(tmp_path):
    """Each kernel's CUDA default (float32 with d whole and with d streamed, bf16, wide Philox
    counters) compiles to an sm_90 cubin with shared memory within an H100/H200 block's limit.
    Needs no GPU (Triton ships ptxas); skipped where this Triton cannot compile for sm_90."""
    import os
    import subprocess
    import sys

    common = _modules()[0]
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600, check=False)
    if out.returncode != 0 and ("ptxas" in out.stderr.lower() and "not found" in out.stderr.lower()):
        pytest.skip("this Triton install cannot compile for sm_90 (no ptxas)")
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report) == 13
    for label, shared in report:
        assert 0 <= shared <= common.SMEM_FOR_TESTS, (label, shared)
