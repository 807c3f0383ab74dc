"""One runner for every grid of trainings: train a run directory, or reuse, resume or extend it.

``diffrec reproduce`` (presets x seeds) and ``diffrec ablate`` (a grid of settings x seeds)
both hand each (config, run directory) to :func:`run_one`, which applies the same rules:

- a directory whose config differs from the wanted one (its model or dataset) is refused;
- a finished run is reused, and extended when the epoch budget grew and it did not stop
  early (a smaller budget never shortens a run: the log says so);
- an unfinished run with a checkpoint is resumed; one stopped during its first epoch starts over;
- a run is locked while a process trains it (a second process gets a one-line error).

:func:`reevaluate` evaluates a finished run's best weights under inference-only changes
(another reverse sampler, steps, rounding, evaluation settings) and caches the result.
"""

from __future__ import annotations

import dataclasses
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any

from diffrec import checkpoint as ckpt
from diffrec.config import RunConfig
from diffrec.errors import DiffrecError


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=pathlib.Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.system()} {cpu}, {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}"


def _check_same_run(stored: RunConfig, wanted: RunConfig, run_dir: pathlib.Path) -> None:
    """Refuse to reuse or resume a run directory whose model or dataset differ from the preset's."""
    a, b = stored.to_dict()["model"], wanted.to_dict()["model"]
    diff = sorted(k for k in set(a) | set(b) if k != "kernel_backend" and a.get(k) != b.get(k))
    if pathlib.Path(stored.data.path).name != pathlib.Path(wanted.data.path).name:
        diff.append("dataset")
    if diff:
        raise DiffrecError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); move it away or pick another --out")


def complete(final: dict[str, Any], epochs: int) -> bool:
    """Whether a finished run (its ``metrics.json``) needs no more epochs for a budget of ``epochs``:
    it stopped early or ran them all. A finished run that is not complete is extended."""
    return bool(final.get("stopped_early")) or final.get("epochs_run", 0) >= epochs


def _never_trained(run: ckpt.RunDir, finished: bool, run_dir: pathlib.Path, epochs: int, final: dict[str, Any]) -> bool:
    """Whether a run directory without a checkpoint to resume from may be started over: true when
    it is absent or holds no finished epoch (a run stopped during its first epoch); an error when
    it holds epochs whose checkpoint is gone (a fresh checkout keeps configs and metrics only)."""
    if finished:
        raise DiffrecError(
            f"{run_dir} finished after {final.get('epochs_run', '?')} epochs; extending it to {epochs} needs its "
            f"checkpoint {ckpt.LAST}, which is not there; restore it, or reuse the run with --epochs {final.get('epochs_run', '?')}"
        )
    log_file = run.file(ckpt.EPOCHS)
    if log_file.is_file() and log_file.read_text().strip():
        raise DiffrecError(f"{run_dir} holds trained epochs but no checkpoint {ckpt.LAST} to resume from; restore it or move the directory away")
    return run_dir.is_dir()


def run_one(
    config: RunConfig,
    run_dir: pathlib.Path,
    data: Any,
    data_path: str,
    *,
    label: str,
    show_progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``config`` in ``run_dir`` or reuse, resume or extend the run there (module docstring);
    return its final metrics (``metrics.json``) with the wall time."""
    from diffrec.resume import RESUMABLE_CHANGES
    from diffrec.trainer import Trainer

    run = ckpt.RunDir(run_dir)
    if run.file(ckpt.CONFIG).is_file():
        _check_same_run(run.valid_config(), config, run_dir)
    finished = run.file(ckpt.FINAL).is_file()
    final = run.read_json(ckpt.FINAL) if finished else {}
    extend = finished and not complete(final, config.train.epochs)
    if finished and not extend:
        log(f"{label}: reusing {run_dir}")
        return final
    resume = run.file(ckpt.LAST).is_file()
    fresh = not resume and _never_trained(run, finished, run_dir, config.train.epochs, final)
    if resume:
        wanted = config.train
        config = run.valid_config()
        stored = config.train
        config.train = dataclasses.replace(stored, **{key: getattr(wanted, key) for key in RESUMABLE_CHANGES})
        for key in ("epochs", "patience"):  # never shorten a run or its patience
            if getattr(wanted, key) < getattr(stored, key):
                log(f"{label}: keeps its {key} of {getattr(stored, key)}; a resumed run is never shortened (asked for {getattr(wanted, key)})")
            setattr(config.train, key, max(getattr(wanted, key), getattr(stored, key)))
    log(f"{label}: {'resuming' if resume else 'training'} in {run_dir}")
    t0 = time.perf_counter()
    earlier = final.get("wall_seconds", 0.0) if finished else 0.0
    final = Trainer(config, data, run_dir, data_path=data_path, show_progress=show_progress).fit(resume=resume, force=fresh)
    if "wall_seconds" not in final:  # a run begun before the trainer timed its epochs
        final["wall_seconds"] = earlier + time.perf_counter() - t0  # the invocations that finished
    run.write_json(ckpt.FINAL, final)
    return final


class WeightsMissing(DiffrecError):
    """A finished run whose best weights are not on this machine (a checkout keeps configs and
    metrics only), so an inference-only change cannot be evaluated on it."""


def reevaluate(
    base_dir: pathlib.Path,
    config: RunConfig,
    data: Any,
    cache: ckpt.RunDir,
    final: dict[str, Any],
    *,
    label: str,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Validation and test metrics of ``base_dir``'s best weights under ``config`` (which differs from
    the base run's only in what inference uses), cached in ``cache`` until the base run changes."""
    from diffrec.evaluation import evaluate
    from diffrec.building import build_model, select_device

    base = ckpt.RunDir(base_dir)
    if not base.file(ckpt.FINAL).is_file():
        raise DiffrecError(f"{label} re-evaluates {base_dir}, which has not finished; train it first")
    base_final = base.read_json(ckpt.FINAL)
    stamp = {"reevaluates": str(base_dir), "base_epochs_run": base_final.get("epochs_run"), "base_best_epoch": base_final.get("best_epoch")}
    same_base = bool(final.get("reevaluates")) and pathlib.Path(final["reevaluates"]).resolve() == base_dir.resolve()  # however the path was spelled
    if same_base and all(final.get(k) == v for k, v in stamp.items() if k != "reevaluates"):
        log(f"{label}: reusing {cache.path}")
        return final
    if not base.file(ckpt.BEST).is_file():
        raise WeightsMissing(
            f"{label} re-evaluates {base_dir}, whose weights {ckpt.BEST} are not there (a checkout keeps configs and metrics only); "
            "restore the file, or train the run again in another --runs folder"
        )
    log(f"{label}: re-evaluating {base_dir}")
    base_config = base.valid_config()
    for key in ("epochs", "seed"):
        setattr(config.train, key, getattr(base_config.train, key))
    t0 = time.perf_counter()
    if config.train.num_threads > 0:
        import torch

        torch.set_num_threads(config.train.num_threads)
    device = select_device(config.train.device)
    model = build_model(config, int(base.dataset()["num_items"])).to(device)
    weights = base.file(ckpt.BEST)
    ckpt.load_model_tensors(model, ckpt.load_tensors(weights), weights)
    model.eval()
    common = dict(max_len=config.model.max_len, device=device, show_progress=False)
    result = {
        "valid": evaluate(model, data, "valid", config.eval, **common).metrics,
        "test": evaluate(model, data, "test", config.eval, **common).metrics,
        "unit": "percent",
        "protocol": config.eval.protocol,
        "epochs_run": base_final.get("epochs_run"),
        "best_epoch": base_final.get("best_epoch"),
        **stamp,
    }
    result["wall_seconds"] = time.perf_counter() - t0
    cache.path.mkdir(parents=True, exist_ok=True)
    config.save(cache.file(ckpt.CONFIG))
    cache.write_json(ckpt.FINAL, result)
    return result
