"""Run directories: config, weights (safetensors) and trainer state (JSON), written atomically.

Layout of a run directory::

    config.toml            the full RunConfig; `diffrec train --config` replays it
    dataset.json           the data the run was trained on (path, sizes, fingerprint)
    model.safetensors      best-validation weights (and extra model state)
    last.safetensors       latest weights and optimiser tensors, for --resume
    trainer_state.json     epoch, best metrics, patience, RNG states, for --resume
    metrics.jsonl          one line per epoch
    metrics.json           final validation and test metrics (written last)
    ids.json               the dataset's own item ids, where they are not 1..N themselves
    .lock                  held by the process training the run (removed when it stops)

No pickle is used anywhere: tensors go to safetensors, everything else to JSON/TOML.
Every tensor file carries a SHA-256 of its tensors in its metadata, checked on load, so
damaged weights are refused instead of producing NaN scores. Files are written
atomically (:mod:`diffrec.files`); a folder counts as a run, and ``--force`` may replace
it, only when it holds a readable ``config.toml`` and nothing but run files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from diffrec.config import RunConfig
from diffrec.data.dataset import SequenceData
from diffrec.errors import DiffrecError
from diffrec.files import atomic_file, atomic_write, is_temp_name, make_dirs, os_error

CONFIG = "config.toml"
DATASET = "dataset.json"
BEST = "model.safetensors"
LAST = "last.safetensors"
STATE = "trainer_state.json"
EPOCHS = "metrics.jsonl"
FINAL = "metrics.json"
IDS = "ids.json"
LOCK = ".lock"
#: what diffrec writes into a run directory (besides top-K lists and plots, recognised by their content)
RUN_FILES = frozenset({CONFIG, DATASET, BEST, LAST, STATE, EPOCHS, FINAL, IDS, LOCK})
#: metadata key of the tensors' SHA-256 in every tensor file diffrec writes
CHECKSUM = "diffrec.sha256"
#: metadata key of ``last.safetensors`` holding the trainer state written with it (one atomic file:
#: a process killed between two writes can never pair the weights of one epoch with the state of another)
STATE_META = "diffrec.trainer_state"
#: metadata key of ``model.safetensors`` holding the epoch whose weights it is
BEST_EPOCH_META = "diffrec.epoch"

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]


@contextmanager
def exclusive(run_dir: pathlib.Path) -> Iterator[None]:
    """Hold the run directory's lock, so that two processes never train (or overwrite) one run.

    The lock is an advisory ``flock`` on ``run_dir/.lock`` (the folder is created when
    missing); the kernel drops it when the process ends, however it ends, so a crashed run
    never leaves a stale lock behind.
    """
    if os.path.lexists(run_dir) and not run_dir.is_dir():
        raise DiffrecError(f"{run_dir} exists and is not a directory")
    make_dirs(run_dir)
    if fcntl is None:
        yield
        return
    path = run_dir / LOCK
    try:
        fh = path.open("a+")
    except OSError as exc:
        raise os_error(exc, run_dir, "write to") from None
    with fh:
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
    atomic_write(path, text)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: pathlib.Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors (with their checksum in the metadata) to ``path`` atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {**(metadata or {}), CHECKSUM: tensors_digest(tensors)}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_metadata(path: pathlib.Path) -> dict[str, str]:
    """The metadata of a safetensors file, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DiffrecError(f"{path}: not a readable safetensors file ({detail})") from None


def load_tensors(path: pathlib.Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, refused when it is unreadable or fails its checksum.

    Files written before checksums were stored load unchecked.
    """
    return load_tensors_and_metadata(path)[0]


def load_tensors_and_metadata(path: pathlib.Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`load_tensors` and the file's metadata."""
    if not path.is_file():
        raise DiffrecError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DiffrecError(f"{path}: not a readable safetensors file ({detail})") from None
    expected = meta.get(CHECKSUM)
    if expected is not None and tensors_digest(tensors) != expected:
        raise DiffrecError(f"{path}: checksum mismatch, the file is damaged (restore it or train again)")
    return tensors, meta


def data_fingerprint(data: SequenceData) -> str:
    h = hashlib.sha256()
    for seq in data.sequences:
        h.update(" ".join(map(str, seq)).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def dataset_record(data: SequenceData, path: str) -> dict[str, Any]:
    """What ``dataset.json`` records: the path as given and resolved, sizes and the fingerprint."""
    resolved = path if path in ("", "synthetic") else str(pathlib.Path(path).resolve())
    return {
        "path": path,
        "resolved_path": resolved,
        "name": data.name,
        "num_users": data.num_users,
        "num_items": data.num_items,
        "num_actions": data.num_actions,
        "fingerprint": data_fingerprint(data),
    }


_EXTRA = "_extra_state"  # the key nn.Module.state_dict gives a module's get_extra_state()


def _has_extra_state(model: torch.nn.Module) -> bool:
    return type(model).get_extra_state is not torch.nn.Module.get_extra_state


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as flat tensors; its extra state (``get_extra_state``, a dict of
    tensors) under ``extra.<name>``."""
    tensors = dict(model.state_dict())
    extra = tensors.pop(_EXTRA, None) or {}
    tensors.update({f"extra.{k}": v for k, v in extra.items()})
    return tensors


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: pathlib.Path) -> None:
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    weights = {k: v for k, v in tensors.items() if not k.startswith(("extra.", "optim.", "rng."))}
    if _has_extra_state(model):
        weights[_EXTRA] = extra
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise DiffrecError(f"{path}: weights do not fit the configured model ({_load_error_detail(exc)})") from None


def _load_error_detail(exc: RuntimeError) -> str:
    """The first concrete problem of a ``load_state_dict`` error (its first line is only a title)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith("Error(s) in loading")), lines[0] if lines else "unknown error")
    return detail if len(detail) <= 300 else detail[:297] + "..."


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

    def entries(self) -> list[str]:
        """Names in the directory, diffrec's lock and temporary files left out."""
        try:
            return sorted(p.name for p in self.path.iterdir() if p.name != LOCK and not is_temp_name(p.name))
        except OSError as exc:
            raise os_error(exc, self.path, "read") from None

    def foreign_entries(self) -> list[str]:
        """Entries that diffrec did not write: not a run file, a top-K list or a plot of its own
        (``evaluate --save-topk RUN/top.tsv``, ``plot``); a sub-folder is always foreign."""
        from diffrec.evaluation import is_topk_file
        from diffrec.plots import is_diffrec_png

        def own(path: pathlib.Path) -> bool:
            if path.is_symlink() or not path.is_file():
                return False
            return path.name in RUN_FILES or is_topk_file(path) or is_diffrec_png(path)

        return [name for name in self.entries() if not own(self.file(name))]

    def check_replaceable(self) -> None:
        """Raise unless the directory is recognisably a diffrec run holding only run files."""
        foreign = self.foreign_entries()
        if not self.is_run():
            held = _listing(foreign or self.entries())
            raise DiffrecError(f"refusing to replace {self.path}: it is not a diffrec run (it holds {held}); --force only replaces diffrec's own run directories")
        try:
            RunConfig.load(self.file(CONFIG))
        except DiffrecError:
            raise DiffrecError(f"refusing to replace {self.path}: its {CONFIG} is not a diffrec config; --force only replaces diffrec's own run directories") from None
        if foreign:
            raise DiffrecError(f"refusing to replace {self.path}: it holds files that diffrec did not write ({_listing(foreign)}); move them away first")

    def config(self) -> RunConfig:
        """The run's config (loaded, not yet validated: its plugins may still need loading)."""
        if not self.is_run():
            raise DiffrecError(f"{self.path} is not a diffrec run directory (no {CONFIG})")
        return RunConfig.load(self.file(CONFIG))

    def valid_config(self) -> RunConfig:
        """The run's config, validated (errors name the file)."""
        config = self.config()
        try:
            return config.validate()
        except DiffrecError as exc:
            raise DiffrecError(f"{self.file(CONFIG)}: {exc}") from None

    def dataset(self) -> dict[str, Any]:
        return self.read_json(DATASET)

    def item_ids(self) -> list[str] | None:
        """The dataset's own item ids (index = internal id), or None where they are 1..N themselves."""
        if not self.file(IDS).is_file():
            return None
        raw = self.read_json(IDS)
        items = raw.get("items") if isinstance(raw, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise DiffrecError(f"{self.file(IDS)}: not an id map written by diffrec")
        return items

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.file(name)
        if not path.is_file():
            raise DiffrecError(f"{path} not found")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DiffrecError(f"{path}: not valid JSON ({exc})") from None
        except OSError as exc:
            raise os_error(exc, path, "read") from None

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.file(name), json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")

    def append_jsonl(self, name: str, obj: Any) -> None:
        try:
            with self.file(name).open("a") as fh:
                fh.write(json.dumps(obj, sort_keys=True) + "\n")
        except OSError as exc:
            raise os_error(exc, self.file(name), "write") from None

    def open_data(self, config: RunConfig, override: str | None = None, warn: Any = None) -> SequenceData:
        """The run's dataset, found from any working directory.

        ``override`` (``--data``) wins; ``warn`` is called when its data differs from the
        run's. Otherwise the resolved path recorded at training time, then the path as given
        (relative to the current directory, then to each folder above the run), the first
        whose data has the run's fingerprint.
        """
        from diffrec.data.source import open_dataset

        record = self.dataset() if self.file(DATASET).is_file() else {}
        fingerprint = record.get("fingerprint")
        if override is not None:
            data = open_dataset(dataclasses.replace(config.data, path=override))
            if warn is not None and fingerprint is not None and data_fingerprint(data) != fingerprint:
                warn("warning: the data differs from the run's training data")
            return data
        given = config.data.path
        if given == "synthetic":
            return open_dataset(config.data)
        candidates = [pathlib.Path(record["resolved_path"])] if record.get("resolved_path") else []
        candidates.append(pathlib.Path(given))
        if not pathlib.Path(given).is_absolute():
            candidates += [folder / given for folder in self.path.resolve().parents]
        differs = []
        for candidate in dict.fromkeys(candidates):
            if not candidate.exists():
                continue
            data = open_dataset(dataclasses.replace(config.data, path=str(candidate)))
            if fingerprint is None or data_fingerprint(data) == fingerprint:
                return data
            differs.append(str(candidate))
        if differs:
            raise DiffrecError(f"the data of {self.path} ({given}) was not found: {differs[0]} holds other data; pass --data PATH")
        raise DiffrecError(f"the data of {self.path} ({given}) is not found from here or beside the run; pass --data PATH")


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return (shown + f" and {len(names) - limit} more" if len(names) > limit else shown) or "nothing readable"
