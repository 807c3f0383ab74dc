"""The checkpoint a run writes after every epoch, and the rules by which a run resumes from it.

``last.safetensors`` holds the weights, the optimizer's tensors, every process's random state
and, in its metadata, the trainer state: one atomic file, so that a kill at any moment leaves
either the previous epoch's checkpoint or this epoch's, never one epoch's weights with another's
state. ``trainer_state.json`` is a readable copy of the state. The epoch's line of
``metrics.jsonl`` is written after both, and a resume writes it again when a kill lost it or cut
it short. A resume reads and checks everything (config, data, weights and their checksums)
before it writes anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffrec import checkpoint as ckpt
from diffrec.config import RunConfig, step_lr
from diffrec.data.dataset import SequenceData
from diffrec.distributed import World, gather_objects
from diffrec.errors import DiffrecError

#: what :func:`read` returns: the checkpoint's tensors and the trainer state saved with them
Saved = tuple[dict[str, torch.Tensor], dict[str, Any]]


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    #: validation metrics of the saved best model (evaluation is seeded, so they need no re-run)
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    stopped_early: bool = False
    epoch_seconds: list[float] = field(default_factory=list)
    examples_per_second: list[float] = field(default_factory=list)
    #: wall time of each completed epoch (training, validation, checkpoint), across invocations
    epoch_wall_seconds: list[float] = field(default_factory=list)
    #: processes that trained the run (torchrun); a resume needs as many
    world_size: int = 1


#: TrainConfig fields a resumed run may change: the epoch budget, the StepLR schedule (checked
#: separately against the epochs already run), a larger patience for a run that has not stopped
#: (the epochs run stay those of a straight run with it) and where it runs (device, threads).
RESUMABLE_CHANGES = ("epochs", "lr_step", "lr_gamma", "patience", "device", "num_threads")


def without_budget(config: RunConfig) -> dict[str, Any]:
    """The config minus what a resumed run may change (RESUMABLE_CHANGES)."""
    raw = config.to_dict()
    for key in RESUMABLE_CHANGES:
        raw["train"].pop(key)
    return raw


def save(
    run: ckpt.RunDir,
    record: dict[str, Any],
    *,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    world: World,
    device: torch.device,
) -> None:
    """Write the checkpoint after an epoch (every process calls it; rank 0 alone writes)."""
    states = gather_objects(torch.get_rng_state(), world)  # every process's random state
    if not world.main:
        return
    tensors = ckpt.model_tensors(model)
    opt_tensors, opt_meta = ckpt.optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = states[0]
    tensors.update({f"rng.torch.rank{r}": s for r, s in enumerate(states) if r})
    if device.type == "cuda":  # so that a resumed CUDA run draws what the straight run would have
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    raw = dict(state.__dict__)
    raw["world_size"] = world.size
    raw["optimizer"] = opt_meta
    raw["numpy_rng"] = rng.bit_generator.state
    raw["last_record"] = record
    ckpt.atomic_save_tensors(tensors, run.file(ckpt.LAST), metadata={ckpt.STATE_META: json.dumps(raw, sort_keys=True, allow_nan=False)})
    run.write_json(ckpt.STATE, raw)
    run.append_jsonl(ckpt.EPOCHS, record)


def read(run: ckpt.RunDir) -> Saved:
    """The checkpoint's tensors and trainer state (inside ``last.safetensors``; a checkpoint
    written before the state moved there pairs with ``trainer_state.json``)."""
    tensors, meta = ckpt.load_tensors_and_metadata(run.file(ckpt.LAST))
    if ckpt.STATE_META not in meta:
        return tensors, run.read_json(ckpt.STATE)
    try:
        return tensors, json.loads(meta[ckpt.STATE_META])
    except json.JSONDecodeError as exc:
        raise DiffrecError(f"{run.file(ckpt.LAST)}: its trainer state is not valid JSON ({exc})") from None


def check(run: ckpt.RunDir, config: RunConfig, data: SequenceData) -> tuple[Saved, bool]:
    """Check that ``run`` can continue with ``config`` on ``data``, writing nothing.

    Returns the checkpoint it read and whether the config grows the run's budget (more epochs,
    a later learning-rate step or more patience), in which case the caller saves the new config.
    """
    if not run.is_run():
        raise DiffrecError(f"cannot resume: {run.path} is not a run directory")
    if not run.file(ckpt.LAST).is_file():
        raise DiffrecError(f"cannot resume: {run.path} has no {ckpt.LAST}")
    saved = run.valid_config()  # both complete, so that a config from before settings were declared compares equal
    if without_budget(saved) != without_budget(config):
        raise DiffrecError(
            f"cannot resume: the options differ from {run.file(ckpt.CONFIG)} "
            "(only --epochs, --device, --threads, a larger --patience and a learning-rate step that leaves the epochs already run unchanged may change)"
        )
    checkpoint = read(run)
    state = checkpoint[1]
    done = int(state.get("epoch", 0))
    old, new = saved.train, config.train
    if any(step_lr(old, e) != step_lr(new, e) for e in range(done)):
        raise DiffrecError(f"cannot resume: the new --lr-step/--lr-gamma would change the learning rate of the {done} epochs already run")
    if new.patience != old.patience and (new.patience < old.patience or state.get("stopped_early")):
        raise DiffrecError(f"cannot resume: --patience may only grow ({old.patience} -> {new.patience}), and only for a run that has not stopped early")
    check_best(run, done, int(state.get("best_epoch", 0)))
    if run.dataset().get("fingerprint") != ckpt.data_fingerprint(data):
        raise DiffrecError(f"cannot resume: the data differs from the data of {run.path}")
    grows = any(getattr(new, k) != getattr(old, k) for k in ("epochs", "lr_step", "lr_gamma", "patience"))
    return checkpoint, grows


def check_best(run: ckpt.RunDir, done: int, best_epoch: int) -> None:
    """Refuse a run whose best weights are not those its checkpoint names (writing nothing).

    ``model.safetensors`` records its epoch. It may be the checkpoint's best epoch, or the epoch
    after the checkpoint (a kill between the two writes: the resumed epoch writes it again); a
    best file from any other epoch, or none where a best epoch exists, means the run's files come
    from different moments, such as an older ``last.safetensors`` restored from a copy.
    """
    best = run.file(ckpt.BEST)
    if not best.is_file():
        if best_epoch:
            raise DiffrecError(f"cannot resume: {run.path} has no {ckpt.BEST}, the best weights (epoch {best_epoch}) that its {ckpt.LAST} names")
        return
    saved = ckpt.read_metadata(best).get(ckpt.BEST_EPOCH_META)
    if saved is None:  # written before best files recorded their epoch
        return
    if int(saved) not in (best_epoch, done + 1):
        raise DiffrecError(
            f"cannot resume: {best} holds the weights of epoch {saved}, but {ckpt.LAST} (epoch {done}) names epoch {best_epoch} as the best; "
            "the two files come from different moments: restore them as a pair"
        )


def restore(
    run: ckpt.RunDir,
    saved: Saved,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    world: World,
    device: torch.device,
) -> TrainState:
    """Load the checkpoint ``saved`` (from :func:`read`) into the model, optimizer and random
    generators, repair ``metrics.jsonl`` (rank 0), and return the trainer state."""
    tensors, raw = saved
    raw = dict(raw)
    record = raw.pop("last_record", None)
    if int(raw.get("world_size", 1)) != world.size:
        raise DiffrecError(f"cannot resume: {run.path} was trained by {raw.get('world_size', 1)} process(es), this is {world.size}; resume with as many")
    ckpt.load_model_tensors(model, tensors, run.file(ckpt.LAST))
    ckpt.load_optimizer(optimizer, tensors, raw.pop("optimizer"))
    torch.set_rng_state(tensors["rng.torch" if world.main else f"rng.torch.rank{world.rank}"])
    if device.type == "cuda" and "rng.cuda" in tensors and world.main:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    rng.bit_generator.state = raw.pop("numpy_rng")
    state = TrainState(**raw)
    if world.main:
        repair_log(run, state.epoch, record)
    return state


def repair_log(run: ckpt.RunDir, epoch: int, record: dict[str, Any] | None) -> None:
    """Make ``metrics.jsonl`` end with the checkpoint's ``epoch`` again after a kill: drop a line
    cut short while it was written, and add the checkpoint's own ``record`` if it never got there.
    Lines of epochs after the checkpoint's (an older ``last.safetensors`` restored from a copy) are
    dropped too, since the resumed run trains those epochs again."""
    log_file = run.file(ckpt.EPOCHS)
    lines = [line for line in log_file.read_text().splitlines() if line.strip()] if log_file.is_file() else []
    kept = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("epoch", 0) > epoch:
            continue
        kept.append(line)
    last = json.loads(kept[-1]).get("epoch", 0) if kept else 0
    if record is not None and last < epoch:
        kept.append(json.dumps(record, sort_keys=True))
    if kept != lines:
        ckpt.atomic_write_text(log_file, "".join(line + "\n" for line in kept))
