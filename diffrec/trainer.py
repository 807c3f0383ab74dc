"""Training loop: Adam + StepLR, periodic validation with patience, best model tested.

Follows the public code's procedure: validation every ``eval_every`` epochs,
a new best model whenever any validation metric improves, stop after
``patience`` validations without improvement, then test the best model.
A checkpoint is written atomically after every epoch so that ``resume``
continues an interrupted run exactly where it stopped (:mod:`diffrec.resume`).

Nothing is lost on the way. A run is written into a new or empty directory; an
existing directory is replaced only with ``force`` and only when it is a diffrec run
holding nothing but run files. The replacement trains in a hidden sibling
(``.NAME.diffrec-new``) and takes the old run's place only when it has finished, so a
replacement that fails, diverges or is interrupted leaves the old run as it was (an
interrupted one continues with ``resume``). A resume checks everything, weights and
checksums included, before it writes anything.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffrec import checkpoint as ckpt
from diffrec import resume
from diffrec.building import build_model, seed_everything, select_device, sequence_example_models
from diffrec.config import RunConfig, step_lr
from diffrec.data.batching import SequenceExamples, TrainExamples
from diffrec.data.dataset import SequenceData
from diffrec.distributed import all_sum, average_gradients, barrier, broadcast_object, shard, world_from_env
from diffrec.errors import ConfigError, DiffrecError, TrainingDivergedError
from diffrec.evaluation import evaluate
from diffrec.files import make_dirs, remove_created, temp_sibling
from diffrec.params import part_name
from diffrec.progress import progress_bar
from diffrec.registry import registry

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
        if config.train.examples == "sequence" and not self.model.takes_sequence_examples(config.model):
            hint = getattr(self.model, "sequence_examples_hint", None)
            raise ConfigError(
                f"model {config.model.model!r} as configured trains on prefix examples only; {hint}"
                if hint
                else f"model {config.model.model!r} trains on prefix examples only; --examples sequence works with: {', '.join(sequence_example_models())}"
            )
        examples = SequenceExamples if config.train.examples == "sequence" else TrainExamples
        self.examples = examples(data, config.model.max_len)
        if len(self.examples) == 0:
            raise DiffrecError("the data has no training examples (every user has fewer than 4 interactions)")
        self.rng = np.random.default_rng(config.train.seed)
        self.state = resume.TrainState()
        self._valid_sampler = self._validation_sampler(config)

    # ------------------------------------------------------------- helpers
    def lr_at(self, epoch: int, step: int) -> float:
        t = self.config.train
        lr = step_lr(t, epoch)
        if t.warmup_steps > 0:
            lr *= min(1.0, (step + 1) / t.warmup_steps)
        return lr

    def _save_last(self, record: dict[str, Any]) -> None:
        resume.save(self.run, record, state=self.state, model=self.model, optimizer=self.optimizer, rng=self.rng, world=self.world, device=self.device)

    def _restore_last(self, saved: resume.Saved | None = None) -> None:
        """Restore the checkpoint (``saved``: what :func:`resume.read` already read, else read it)."""
        self.state = resume.restore(
            self.run, saved or resume.read(self.run), model=self.model, optimizer=self.optimizer, rng=self.rng, world=self.world, device=self.device
        )

    def _prepared(self, run_dir: pathlib.Path, resumed: bool) -> None:
        """Rank 0 tells the other processes where the run trains, once it is ready (torchrun)."""
        if self.world.distributed and self.world.main:
            broadcast_object({"path": str(run_dir), "resume": resumed}, self.world)
            self._announced = True

    def _prepare_resume(self) -> None:
        """Check that the run in ``self.run`` can continue with this config (:func:`resume.check`),
        then restore it; the one write before that is the config, when it grows the budget."""
        checkpoint, grows = resume.check(self.run, self.config, self.data)
        self._restore_last(checkpoint)
        if grows:
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
                        ckpt.atomic_save_tensors(ckpt.model_tensors(self.model), self.run.file(ckpt.BEST), metadata={ckpt.BEST_EPOCH_META: str(epoch + 1)})
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
