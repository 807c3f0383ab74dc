"""Run directories: config, weights (safetensors) and trainer state (JSON), written atomically.

Layout of a run directory::

    config.toml            the full RunConfig; `diffrec train --config` replays it
    dataset.json           the data the run was trained on (path, sizes, fingerprint)
    model.safetensors      best-validation weights (and extra model state)
    last.safetensors       latest weights and optimiser tensors, for --resume
    trainer_state.json     epoch, best metrics, patience, RNG states, for --resume
    metrics.jsonl          one line per epoch
    metrics.json           final validation and test metrics (written last)
    .lock                  held by the process training the run (removed when it stops)

No pickle is used anywhere: tensors go to safetensors, everything else to JSON/TOML.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffrec.config import RunConfig
from diffrec.data.dataset import SequenceData
from diffrec.errors import DiffrecError

CONFIG = "config.toml"
DATASET = "dataset.json"
BEST = "model.safetensors"
LAST = "last.safetensors"
STATE = "trainer_state.json"
EPOCHS = "metrics.jsonl"
FINAL = "metrics.json"
LOCK = ".lock"

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]


@contextmanager
def exclusive(run_dir: pathlib.Path) -> Iterator[None]:
    """Hold the run directory's lock, so that two processes never train (or overwrite) one run.

    The lock is an advisory ``flock`` on ``run_dir/.lock``; the kernel drops it when the
    process ends, however it ends, so a crashed run never leaves a stale lock behind.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise DiffrecError(f"{run_dir} exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = run_dir / LOCK
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            raise DiffrecError(f"{run_dir} is in use by another process (pid {owner}); wait for it to finish or pick another directory") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


@contextmanager
def waiting_lock(path: pathlib.Path) -> Iterator[None]:
    """Wait for, then hold, an advisory lock on ``path`` (created if missing, never removed):
    serialises a read-modify-write of a file that several processes update, such as a summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: pathlib.Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: pathlib.Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DiffrecError(f"checkpoint file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DiffrecError(f"{path}: not a readable safetensors file ({exc})") from None


def data_fingerprint(data: SequenceData) -> str:
    h = hashlib.sha256()
    for seq in data.sequences:
        h.update(" ".join(map(str, seq)).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def dataset_record(data: SequenceData, path: str) -> dict[str, Any]:
    return {
        "path": path,
        "name": data.name,
        "num_users": data.num_users,
        "num_items": data.num_items,
        "num_actions": data.num_actions,
        "fingerprint": data_fingerprint(data),
    }


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors = dict(model.state_dict())
    tensors.update({f"extra.{k}": v for k, v in model.extra_state().items()})  # type: ignore[operator]
    return tensors


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: pathlib.Path) -> None:
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    weights = {k: v for k, v in tensors.items() if not k.startswith(("extra.", "optim.", "rng."))}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DiffrecError(f"{path}: weights do not fit the configured model ({first})") from None
    model.load_extra_state(extra)  # type: ignore[operator]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class RunDir:
    """A run directory on disk."""

    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)

    def file(self, name: str) -> pathlib.Path:
        return self.path / name

    def exists(self) -> bool:
        return self.path.exists()

    def is_run(self) -> bool:
        return self.file(CONFIG).is_file()

    def config(self) -> RunConfig:
        if not self.is_run():
            raise DiffrecError(f"{self.path} is not a diffrec run directory (no {CONFIG})")
        return RunConfig.load(self.file(CONFIG))

    def dataset(self) -> dict[str, Any]:
        return self.read_json(DATASET)

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.file(name)
        if not path.is_file():
            raise DiffrecError(f"{path} not found")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DiffrecError(f"{path}: not valid JSON ({exc})") from None

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.file(name), json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def append_jsonl(self, name: str, obj: Any) -> None:
        with self.file(name).open("a") as fh:
            fh.write(json.dumps(obj, sort_keys=True) + "\n")
