"""Training loop: Adam + StepLR, periodic validation with patience, best model tested.

Follows the public code's procedure: validation every ``eval_every`` epochs,
a new best model whenever any validation metric improves, stop after
``patience`` validations without improvement, then test the best model.
Checkpoints are written atomically after every epoch so that ``resume``
continues an interrupted run exactly where it stopped.

Nothing is lost on the way. A run is written into a new or empty directory; an
existing directory is replaced only with ``force`` and only when it is a diffrec run
holding nothing but run files. The replacement trains in a hidden sibling
(``.NAME.diffrec-new``) and takes the old run's place only when it has finished, so a
replacement that fails, diverges or is interrupted leaves the old run as it was (an
interrupted one continues with ``resume``). A resume checks everything, weights and
checksums included, before it writes anything.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffrec import checkpoint as ckpt
from diffrec.building import build_model, seed_everything, select_device, sequence_example_models
from diffrec.config import RunConfig, TrainConfig
from diffrec.data.batching import SequenceExamples, TrainExamples
from diffrec.data.dataset import SequenceData
from diffrec.distributed import all_sum, average_gradients, barrier, broadcast_object, gather_objects, shard, world_from_env
from diffrec.errors import ConfigError, DiffrecError, TrainingDivergedError
from diffrec.evaluation import evaluate
from diffrec.files import make_dirs, remove_created, temp_sibling
from diffrec.params import part_name
from diffrec.progress import progress_bar
from diffrec.registry import registry


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


EpochCallback = Callable[[dict[str, Any]], None]


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        data: SequenceData,
        run_dir: str | pathlib.Path,
        *,
        data_path: str = "",
        show_progress: bool = True,
        on_epoch: EpochCallback | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config.validate()
        self.data = data
        self.run = ckpt.RunDir(run_dir)
        self.data_path = data_path
        self.show_progress = show_progress
        self.on_epoch = on_epoch
        self.log = log or (lambda line: None)
        self.device = select_device(config.train.device)
        self.world = world_from_env(self.device.type)
        if self.world.distributed:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.world.local_rank)
            if config.eval.rng != "per_batch":  # sharded evaluation needs batch-seeded randomness
                self.log("torchrun: eval.rng = per_batch, so that every world size evaluates alike")
                config.eval.rng = "per_batch"
            if part_name(getattr(config.model, "timestep_sampler", "uniform")) != "uniform":
                raise ConfigError("a learning timestep sampler keeps per-process statistics; use the uniform sampler under torchrun")
        self._announced = False
        if config.train.num_threads > 0:
            torch.set_num_threads(config.train.num_threads)
        seed_everything(config.train.seed)
        self.model = build_model(config, data.num_items).to(self.device)
        if self.world.distributed:  # the same weights everywhere, other dropout and noise per process
            torch.manual_seed(config.train.seed + self.world.rank)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
        if config.train.examples == "sequence" and not self.model.supports_sequence_examples:
            raise ConfigError(
                f"model {config.model.model!r} trains on prefix examples only; --examples sequence works with: {', '.join(sequence_example_models())}"
            )
        examples = SequenceExamples if config.train.examples == "sequence" else TrainExamples
        self.examples = examples(data, config.model.max_len)
        if len(self.examples) == 0:
            raise DiffrecError("the data has no training examples (every user has fewer than 4 interactions)")
        self.rng = np.random.default_rng(config.train.seed)
        self.state = TrainState()
        self._valid_sampler = self._validation_sampler(config)

    # ------------------------------------------------------------- helpers
    def lr_at(self, epoch: int, step: int) -> float:
        t = self.config.train
        lr = step_lr(t, epoch)
        if t.warmup_steps > 0:
            lr *= min(1.0, (step + 1) / t.warmup_steps)
        return lr

    def _save_last(self, record: dict[str, Any]) -> None:
        """The checkpoint after an epoch: weights, optimizer, random states and the trainer state
        in one atomic file (``last.safetensors``), then a readable copy of the state and the
        epoch's line of ``metrics.jsonl`` (which a resume writes again if a kill lost it)."""
        states = gather_objects(torch.get_rng_state(), self.world)  # every process's random state
        if not self.world.main:
            return
        tensors = ckpt.model_tensors(self.model)
        opt_tensors, opt_meta = ckpt.optimizer_tensors(self.optimizer)
        tensors.update(opt_tensors)
        tensors["rng.torch"] = states[0]
        tensors.update({f"rng.torch.rank{r}": state for r, state in enumerate(states) if r})
        if self.device.type == "cuda":  # so that a resumed CUDA run draws what the straight run would have
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        state = dict(self.state.__dict__)
        state["world_size"] = self.world.size
        state["optimizer"] = opt_meta
        state["numpy_rng"] = self.rng.bit_generator.state
        state["last_record"] = record
        ckpt.atomic_save_tensors(tensors, self.run.file(ckpt.LAST), metadata={ckpt.STATE_META: json.dumps(state, sort_keys=True, allow_nan=False)})
        self.run.write_json(ckpt.STATE, state)
        self.run.append_jsonl(ckpt.EPOCHS, record)

    def _saved_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The checkpoint's tensors and the trainer state saved with them (inside ``last.safetensors``;
        a checkpoint written before the state moved there pairs with ``trainer_state.json``)."""
        tensors, meta = ckpt.load_tensors_and_metadata(self.run.file(ckpt.LAST))
        if ckpt.STATE_META not in meta:
            return tensors, self.run.read_json(ckpt.STATE)
        try:
            return tensors, json.loads(meta[ckpt.STATE_META])
        except json.JSONDecodeError as exc:
            raise DiffrecError(f"{self.run.file(ckpt.LAST)}: its trainer state is not valid JSON ({exc})") from None

    def _repair_log(self, record: dict[str, Any] | None) -> None:
        """Make ``metrics.jsonl`` end with the checkpoint's epoch again after a kill: drop a line
        cut short while it was written, and add the checkpoint's own line if it never got there."""
        log_file = self.run.file(ckpt.EPOCHS)
        lines = [line for line in log_file.read_text().splitlines() if line.strip()] if log_file.is_file() else []
        kept = []
        for line in lines:
            try:
                json.loads(line)
            except json.JSONDecodeError:
                continue
            kept.append(line)
        last = json.loads(kept[-1]).get("epoch", 0) if kept else 0
        if record is not None and last < self.state.epoch:
            kept.append(json.dumps(record, sort_keys=True))
        if kept != lines:
            ckpt.atomic_write_text(log_file, "".join(line + "\n" for line in kept))

    def _restore_last(self, saved: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> None:
        """Restore the checkpoint (``saved``: what :meth:`_saved_state` already read, else read it)."""
        tensors, raw = saved or self._saved_state()
        record = raw.pop("last_record", None)
        if int(raw.get("world_size", 1)) != self.world.size:
            raise DiffrecError(f"cannot resume: {self.run.path} was trained by {raw.get('world_size', 1)} process(es), this is {self.world.size}; resume with as many")
        ckpt.load_model_tensors(self.model, tensors, self.run.file(ckpt.LAST))
        ckpt.load_optimizer(self.optimizer, tensors, raw.pop("optimizer"))
        torch.set_rng_state(tensors["rng.torch" if self.world.main else f"rng.torch.rank{self.world.rank}"])
        if self.device.type == "cuda" and "rng.cuda" in tensors and self.world.main:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.rng.bit_generator.state = raw.pop("numpy_rng")
        self.state = TrainState(**raw)
        if self.world.main:
            self._repair_log(record)

    def _prepared(self, run_dir: pathlib.Path, resumed: bool) -> None:
        """Rank 0 tells the other processes where the run trains, once it is ready (torchrun)."""
        if self.world.distributed and self.world.main:
            broadcast_object({"path": str(run_dir), "resume": resumed}, self.world)
            self._announced = True

    def _prepare_resume(self) -> None:
        """Check that the run in ``self.run`` can continue with this config, then restore it.

        Everything is read and checked (config, data, weights and their checksums) before
        the one write a resume may make: the config, when it grows the budget.
        """
        if not self.run.is_run():
            raise DiffrecError(f"cannot resume: {self.run.path} is not a run directory")
        if not self.run.file(ckpt.LAST).is_file():
            raise DiffrecError(f"cannot resume: {self.run.path} has no {ckpt.LAST}")
        saved = self.run.valid_config()  # both complete, so that a config from before settings were declared compares equal
        if _without_budget(saved) != _without_budget(self.config):
            raise DiffrecError(
                f"cannot resume: the options differ from {self.run.file(ckpt.CONFIG)} "
                "(only --epochs, --device, --threads, a larger --patience and a learning-rate step that leaves the epochs already run unchanged may change)"
            )
        checkpoint = self._saved_state()
        state = checkpoint[1]
        done = int(state.get("epoch", 0))
        old, new = saved.train, self.config.train
        if any(step_lr(old, e) != step_lr(new, e) for e in range(done)):
            raise DiffrecError(f"cannot resume: the new --lr-step/--lr-gamma would change the learning rate of the {done} epochs already run")
        if new.patience != old.patience:
            if new.patience < old.patience or state.get("stopped_early"):
                raise DiffrecError(
                    f"cannot resume: --patience may only grow ({old.patience} -> {new.patience}), and only for a run that has not stopped early"
                )
        recorded = self.run.dataset()
        if recorded.get("fingerprint") != ckpt.data_fingerprint(self.data):
            raise DiffrecError(f"cannot resume: the data differs from the data of {self.run.path}")
        self._restore_last(checkpoint)
        if any(getattr(new, k) != getattr(old, k) for k in ("epochs", "lr_step", "lr_gamma", "patience")):
            self.config.save(self.run.file(ckpt.CONFIG))  # a longer budget, a later LR decay or more patience for the same run

    def _start(self) -> None:
        """Write the config, the data record and the id map of a new run."""
        self.config.save(self.run.file(ckpt.CONFIG))
        self.run.write_json(ckpt.DATASET, ckpt.dataset_record(self.data, self.data_path))
        if self.data.item_ids is not None and any(self.data.item_ids[i] != str(i) for i in range(1, self.data.num_items + 1)):
            self.run.write_json(ckpt.IDS, {"items": self.data.item_ids})

    def _remove_run_files(self) -> None:
        """Delete what this run wrote (never anything else) after it diverged."""
        for name in ckpt.RUN_FILES - {ckpt.LOCK}:
            self.run.file(name).unlink(missing_ok=True)
    # ---------------------------------------------------------------- loop
    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        t = self.config.train
        self.model.train()
        total, count = 0.0, 0
        start = time.perf_counter()
        batches = self.examples.batches(t.batch_size, self.rng, bucketing=t.bucketing, trim=self.model.trims_padding_exactly)
        desc = f"epoch {epoch + 1}/{t.epochs}"
        params = list(self.model.parameters())
        for batch in progress_bar(batches, total=self.examples.num_batches(t.batch_size), description=desc, enabled=self.show_progress and self.world.main):
            full = batch.num_targets  # examples/s counts (history, next item) pairs, whatever the example type
            if self.world.distributed:
                batch = shard(batch, self.world)  # this process's rows of the global batch
            batch = batch.to(self.device)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(epoch, self.state.step)
            n = batch.num_targets
            self.optimizer.zero_grad(set_to_none=True)
            if n:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
                    loss = self.model.calculate_loss(batch)
            else:  # a global batch smaller than the world leaves this process nothing
                loss = sum(p.sum() for p in params) * 0.0
            finite = bool(torch.isfinite(loss))  # the step's one wait for the device
            if self.world.distributed:
                finite = float(all_sum(torch.tensor([float(finite)]), self.world)) == self.world.size
            if not finite:
                raise TrainingDivergedError(f"loss became {loss.item()} at epoch {epoch + 1}, step {self.state.step + 1}; lower the learning rate")
            loss.backward()
            average_gradients(params, n / full, self.world)  # the gradient of the global batch's mean loss
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            self.optimizer.step()
            self.state.step += 1
            total = total + loss.detach().double() * n  # summed on the device: no second wait per step
            count += n
        seconds = time.perf_counter() - start
        total, count = (float(v) for v in all_sum(torch.tensor([float(total), float(count)], dtype=torch.float64), self.world))
        return total / count, seconds, int(count)

    def _validation_sampler(self, config: RunConfig) -> Any:
        """The reverse sampler of the validation passes during training (``train.valid_reverse_sampler``), or None."""
        name = config.train.valid_reverse_sampler
        if not name:
            return None
        if not hasattr(self.model, "reverse_sampler"):
            raise ConfigError(f"train.valid_reverse_sampler applies to diffusion models only; model {config.model.model!r} has no reverse sampler")
        sampler = registry("reverse_sampler").build(name, config=config.model)
        current = self.model.reverse_sampler
        self.model.reverse_sampler = sampler  # the model's own checks (guidance needs an unconditional branch)
        self.model.reverse_sampler = current
        return sampler

    def validate(self) -> dict[str, float]:
        """Validation metrics of the current weights, through ``train.valid_reverse_sampler`` where set."""
        def metrics() -> dict[str, float]:
            return evaluate(
                self.model, self.data, "valid", self.config.eval, max_len=self.config.model.max_len, device=self.device, show_progress=self.show_progress, world=self.world
            ).metrics

        if self._valid_sampler is None:
            return metrics()
        own, self.model.reverse_sampler = self.model.reverse_sampler, self._valid_sampler
        try:
            return metrics()
        finally:
            self.model.reverse_sampler = own

    def fit(self, *, resume: bool = False, force: bool = False) -> dict[str, Any]:
        """Train (or ``resume``) the run and test its best model; see the module docstring.

        Under torchrun rank 0 prepares the run directory (and alone writes to it); the other
        processes learn from it where the run trains, restore its checkpoint and train alongside.
        """
        if not self.world.distributed:
            return self._fit_main(resume, force)
        if self.world.main:
            try:
                return self._fit_main(resume, force)
            except BaseException as exc:
                if not self._announced:
                    broadcast_object({"error": str(exc) or type(exc).__name__}, self.world)
                raise
        told = broadcast_object(None, self.world)
        if "error" in told:
            raise DiffrecError(told["error"])
        self.run = ckpt.RunDir(told["path"])
        if told["resume"]:
            self._restore_last()
        return self._fit()

    def _fit_main(self, resume: bool, force: bool) -> dict[str, Any]:
        target = self.run.path
        created = make_dirs(target)
        try:
            with ckpt.exclusive(target):
                return self._fit_in(target, resume=resume, force=force)
        except BaseException:
            remove_created(created)  # only folders this call made, and only when empty
            raise

    def _fit_in(self, target: pathlib.Path, *, resume: bool, force: bool) -> dict[str, Any]:
        stage = staging_dir(target)
        if resume:
            if stage.is_dir() and (stage / ckpt.LAST).is_file():
                self.log(f"resuming the replacement of {target} begun with --force (in {stage.name})")
                return self._fit_staged(stage, target, resume=True)
            self._prepare_resume()
            self._prepared(target, True)
            return self._fit()
        if not ckpt.RunDir(target).entries():
            self._start()
            self._prepared(target, False)
            try:
                return self._fit()
            except TrainingDivergedError:
                self._remove_run_files()
                raise
        if not force:
            raise DiffrecError(f"output directory {target} exists and is not empty (use --force to replace the run in it, or --resume to continue it)")
        ckpt.RunDir(target).check_replaceable()
        if os.path.lexists(stage):
            ckpt.RunDir(stage).check_replaceable()
            with ckpt.exclusive(stage):
                pass  # refuses while another process is writing that replacement
            shutil.rmtree(stage)
        return self._fit_staged(stage, target, resume=False)

    def _fit_staged(self, stage: pathlib.Path, target: pathlib.Path, *, resume: bool) -> dict[str, Any]:
        """Train the replacement of ``target`` in ``stage``; swap them only once it has finished."""
        if not resume:
            make_dirs(stage)
        with ckpt.exclusive(stage):
            self.run = ckpt.RunDir(stage)
            try:
                if resume:
                    self._prepare_resume()
                else:
                    self._start()
                self._prepared(stage, resume)
                final = self._fit()
            except BaseException as exc:
                if isinstance(exc, DiffrecError) or not (stage / ckpt.LAST).is_file():
                    shutil.rmtree(stage, ignore_errors=True)  # nothing to resume: the old run stays as it was
                self.run = ckpt.RunDir(target)
                raise
            old = temp_sibling(target, "old")
            os.rename(target, old)
            os.rename(stage, target)
            shutil.rmtree(old, ignore_errors=True)
            self.run = ckpt.RunDir(target)
            return final

    def _fit(self) -> dict[str, Any]:
        t = self.config.train
        if self.state.epoch >= t.epochs or self.state.stopped_early:
            return self._finish()
        while self.state.epoch < t.epochs and not self.state.stopped_early:
            epoch = self.state.epoch
            started = time.perf_counter()
            loss, seconds, n = self.train_epoch(epoch)
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "loss": loss,
                "seconds": seconds,
                "examples_per_second": n / seconds,
                "lr": self.lr_at(epoch, max(self.state.step - 1, 0)),
            }
            self.state.epoch_seconds.append(seconds)
            self.state.examples_per_second.append(n / seconds)
            if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                valid = self.validate()
                record["valid"] = valid
                improved = not self.state.best or any(v > self.state.best.get(k, -math.inf) for k, v in valid.items())
                if improved:
                    self.state.best = {k: max(v, self.state.best.get(k, -math.inf)) for k, v in valid.items()}
                    self.state.best_epoch = epoch + 1
                    self.state.best_valid = valid
                    self.state.bad_evals = 0
                    if self.world.main:
                        ckpt.atomic_save_tensors(ckpt.model_tensors(self.model), self.run.file(ckpt.BEST))
                else:
                    self.state.bad_evals += 1
                    if self.state.bad_evals >= t.patience:
                        self.state.stopped_early = True
            self.state.epoch = epoch + 1
            self.state.epoch_wall_seconds.append(time.perf_counter() - started)
            self._save_last(record)
            if self.world.main and self.on_epoch is not None:
                self.on_epoch(record)
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        started = time.perf_counter()
        barrier(self.world)  # rank 0 has written the best weights
        best = self.run.file(ckpt.BEST)
        ckpt.load_model_tensors(self.model, ckpt.load_tensors(best), best)
        common = dict(max_len=self.config.model.max_len, device=self.device, show_progress=self.show_progress, world=self.world)
        reusable = self._valid_sampler is None and self.state.best_valid  # else the best epoch was validated through another sampler
        valid = self.state.best_valid if reusable else evaluate(self.model, self.data, "valid", self.config.eval, **common).metrics
        test = evaluate(self.model, self.data, "test", self.config.eval, **common).metrics
        final = {
            "valid": valid,
            "test": test,
            "unit": "percent",
            "protocol": self.config.eval.protocol,
            "best_epoch": self.state.best_epoch,
            "epochs_run": self.state.epoch,
            "stopped_early": self.state.stopped_early,
            "train_seconds_per_epoch": float(np.mean(self.state.epoch_seconds)) if self.state.epoch_seconds else None,
            "examples_per_second": float(np.mean(self.state.examples_per_second)) if self.state.examples_per_second else None,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "world_size": self.world.size,
        }
        # The wall time of the run as if trained straight through: every epoch (whichever
        # invocation ran it) plus this final test; unknown for runs begun before epochs were timed.
        if len(self.state.epoch_wall_seconds) == self.state.epoch:
            final["wall_seconds"] = sum(self.state.epoch_wall_seconds) + time.perf_counter() - started
        if self.world.main:
            self.run.write_json(ckpt.FINAL, final)
        return final


def staging_dir(target: pathlib.Path) -> pathlib.Path:
    """Where a ``--force`` replacement of ``target`` trains until it takes its place."""
    return target.with_name(f".{target.name}.diffrec-new")


def step_lr(train: TrainConfig, epoch: int) -> float:
    """StepLR: the base rate times gamma for every lr_step epochs completed (0-based epoch)."""
    return train.lr * train.lr_gamma ** (epoch // train.lr_step)


#: TrainConfig fields a resumed run may change: the epoch budget, the StepLR schedule (checked
#: separately against the epochs already run), a larger patience for a run that has not stopped
#: (the epochs run stay those of a straight run with it) and where it runs (device, threads).
RESUMABLE_CHANGES = ("epochs", "lr_step", "lr_gamma", "patience", "device", "num_threads")


def _without_budget(config: RunConfig) -> dict[str, Any]:
    """The config minus what a resumed run may change (RESUMABLE_CHANGES)."""
    raw = config.to_dict()
    for key in RESUMABLE_CHANGES:
        raw["train"].pop(key)
    return raw
