import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffrec import checkpoint as ckpt
from diffrec.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from diffrec.data.synthetic import make_synthetic, popularity_hr_at_k
from diffrec.errors import DiffrecError, TrainingDivergedError
from diffrec.evaluation import evaluate
from diffrec.building import load_run_model
from diffrec.trainer import Trainer


def tiny_config(**train) -> RunConfig:
    t = dict(epochs=2, batch_size=256, eval_every=1, patience=3, seed=3)
    t.update(train)
    return RunConfig(
        model=ModelConfig(hidden_size=32, num_blocks=1, num_heads=2, max_len=20, emb_init_std=0.05),
        train=TrainConfig(**t),
        eval=EvalConfig(batch_size=256),
    )


def edit_saved_state(run, **changes) -> None:
    """Change the trainer state that a resume reads: the one saved inside ``last.safetensors``."""
    tensors, meta = ckpt.load_tensors_and_metadata(run / ckpt.LAST)
    state = json.loads(meta[ckpt.STATE_META])
    ckpt.atomic_save_tensors(tensors, run / ckpt.LAST, metadata={ckpt.STATE_META: json.dumps({**state, **changes})})


@pytest.fixture(scope="module")
def small_data():
    return make_synthetic(num_users=400, num_items=120, seed=1)


def _approximators() -> list[str]:
    from diffrec.registry import load_builtin_parts, registry

    load_builtin_parts()
    return registry("approximator").names()


@pytest.mark.slow
@pytest.mark.parametrize("approximator", _approximators())
def test_learns_the_planted_structure(approximator, tmp_path):
    """DiffuRec on the synthetic data, with every registered approximator, beats popularity by a wide margin within a few epochs."""
    data = make_synthetic(num_users=500, num_items=300, seed=0)
    epochs = 4 if approximator == "transformer" else 3  # every approximator is 50+ HR@10 points above popularity by then
    config = tiny_config(epochs=epochs, eval_every=epochs, batch_size=256)
    config.model = ModelConfig(hidden_size=64, num_blocks=2, num_heads=2, max_len=20, emb_init_std=0.05, approximator=approximator)
    final = Trainer(config, data, tmp_path / "run", show_progress=False).fit()
    popularity = 100 * popularity_hr_at_k(data, 10)
    assert final["test"]["HR@10"] > popularity + 30, (final["test"], popularity)
    assert final["test"]["NDCG@10"] > 15
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert len(losses) == epochs and losses[-1] < losses[0]


def test_run_directory_and_repeatable_evaluation(tmp_path, small_data):
    run = tmp_path / "run"
    final = Trainer(tiny_config(), small_data, run, show_progress=False).fit()
    for name in ("config.toml", "dataset.json", "model.safetensors", "last.safetensors", "trainer_state.json", "metrics.jsonl", "metrics.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.tmp"))
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(final))
    assert set(final["test"]) == {f"{m}@{k}" for k in (5, 10, 20) for m in ("HR", "NDCG", "MRR")}
    assert all(0 <= v <= 100 for v in final["test"].values())
    config, model, _ = load_run_model(run, torch.device("cpu"))
    again = evaluate(model, small_data, "test", config.eval, max_len=config.model.max_len, device=torch.device("cpu")).metrics
    assert again == final["test"]  # seeded reverse process: the same numbers twice
    other_seed = EvalConfig(batch_size=256, seed=99)
    assert evaluate(model, small_data, "test", other_seed, max_len=20, device=torch.device("cpu")).metrics != final["test"]


def test_padding_never_ranked_under_the_correct_protocol(tmp_path, small_data):
    run = tmp_path / "run"
    Trainer(tiny_config(epochs=1), small_data, run, show_progress=False).fit()
    config, model, _ = load_run_model(run, torch.device("cpu"))
    result = evaluate(model, small_data, "test", config.eval, max_len=20, device=torch.device("cpu"), save_topk=small_data.num_items)
    assert result.topk.shape == (small_data.num_users, small_data.num_items)
    assert (result.topk != 0).all()
    official = EvalConfig(batch_size=256, protocol="official")
    res_off = evaluate(model, small_data, "test", official, max_len=20, device=torch.device("cpu"), save_topk=small_data.num_items)
    assert (res_off.topk == 0).any()  # the public code ranks the padding id like an item


def test_resume_continues_exactly(tmp_path, small_data):
    straight = tmp_path / "straight"
    Trainer(tiny_config(epochs=2), small_data, straight, show_progress=False).fit()
    split = tmp_path / "split"
    Trainer(tiny_config(epochs=1), small_data, split, show_progress=False).fit()
    # continue the same run for one more epoch: the config must match, so rewrite the epoch budget
    config = tiny_config(epochs=2)
    config.save(split / "config.toml")
    Trainer(config, small_data, split, show_progress=False).fit(resume=True)
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(split / "last.safetensors"))
    for key in a:
        if not key.startswith("rng"):
            assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert len((split / "metrics.jsonl").read_text().splitlines()) == 2


def test_existing_output_is_not_clobbered(tmp_path, small_data):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep")
    with pytest.raises(DiffrecError, match="exists and is not empty"):
        Trainer(tiny_config(epochs=1), small_data, run, show_progress=False).fit()
    assert (run / "precious.txt").read_text() == "keep"
    with pytest.raises(DiffrecError, match="not a diffrec run .*precious.txt"):  # --force replaces diffrec's own runs only
        Trainer(tiny_config(epochs=1), small_data, run, show_progress=False).fit(force=True)
    assert sorted(p.name for p in run.iterdir()) == ["precious.txt"] and (run / "precious.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "no staging folder left behind"


def test_a_run_directory_in_use_is_refused(tmp_path, small_data):
    """A second process may neither resume nor overwrite a run that another process is training."""
    run = tmp_path / "run"
    Trainer(tiny_config(epochs=1), small_data, run, show_progress=False).fit()
    assert not (run / ckpt.LOCK).exists()  # released when training ends
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with ckpt.exclusive(run):  # another trainer holds the run
        for kwargs in ({"resume": True}, {"force": True}, {}):
            with pytest.raises(DiffrecError, match=r"in use by another process \(pid \d+\)"):
                Trainer(tiny_config(epochs=2), small_data, run, show_progress=False).fit(**kwargs)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert Trainer(tiny_config(epochs=2), small_data, run, show_progress=False).fit(resume=True)["epochs_run"] == 2


def test_resume_extends_the_epoch_budget(tmp_path, small_data):
    run = tmp_path / "run"
    Trainer(tiny_config(epochs=1), small_data, run, show_progress=False).fit()
    final = Trainer(tiny_config(epochs=3), small_data, run, show_progress=False).fit(resume=True)
    assert final["epochs_run"] == 3
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert "epochs = 3" in (run / "config.toml").read_text()


def test_resume_may_add_a_later_lr_decay_and_matches_a_straight_run(tmp_path, small_data):
    """Extending a run with a StepLR decay after the epochs already run equals using it from the start."""
    straight = tmp_path / "straight"
    Trainer(tiny_config(epochs=3, lr_step=2), small_data, straight, show_progress=False).fit()
    run = tmp_path / "run"
    Trainer(tiny_config(epochs=2, lr_step=100), small_data, run, show_progress=False).fit()
    Trainer(tiny_config(epochs=3, lr_step=2), small_data, run, show_progress=False).fit(resume=True)
    assert "lr_step = 2" in (run / "config.toml").read_text()
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4])
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(run / "last.safetensors"))
    for key in a:
        if not key.startswith("rng"):
            assert torch.allclose(a[key], b[key], atol=1e-6), key
    with pytest.raises(DiffrecError, match="would change the learning rate of the 3 epochs already run"):
        Trainer(tiny_config(epochs=4, lr_step=1), small_data, run, show_progress=False).fit(resume=True)


def test_resume_refuses_other_options_or_data(tmp_path, small_data):
    run = tmp_path / "run"
    Trainer(tiny_config(epochs=1), small_data, run, show_progress=False).fit()
    with pytest.raises(DiffrecError, match="options differ"):
        Trainer(tiny_config(epochs=1, lr=0.5), small_data, run, show_progress=False).fit(resume=True)
    other = make_synthetic(num_users=400, num_items=120, seed=2)
    with pytest.raises(DiffrecError, match="data differs"):
        Trainer(tiny_config(epochs=1), other, run, show_progress=False).fit(resume=True)
    with pytest.raises(DiffrecError, match="not a run directory"):
        Trainer(tiny_config(epochs=1), small_data, tmp_path / "nothing", show_progress=False).fit(resume=True)
    assert not (tmp_path / "nothing").exists()  # a refused run leaves no empty directory behind


def test_nan_loss_stops_cleanly(tmp_path, small_data):
    config = tiny_config(epochs=1, lr=1e30)
    config.model.emb_init_std = 1e30
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="loss became"):
        Trainer(config, small_data, run, show_progress=False).fit()
    assert not run.exists()  # nothing half-written


def test_warmup_and_step_schedule():
    trainer_cfg = tiny_config(lr=1.0, warmup_steps=4, lr_step=2, lr_gamma=0.5)
    trainer = Trainer.__new__(Trainer)
    trainer.config = trainer_cfg
    assert [trainer.lr_at(0, s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert trainer.lr_at(2, 10) == 0.5 and trainer.lr_at(5, 10) == 0.25
    assert np.isclose(trainer.lr_at(4, 0), 0.25 * 0.25)


def test_resume_may_raise_the_patience_of_a_running_run_only(tmp_path, small_data):
    run = tmp_path / "run"
    Trainer(tiny_config(epochs=1, patience=2), small_data, run, show_progress=False).fit()
    with pytest.raises(DiffrecError, match=r"--patience may only grow \(2 -> 1\)"):
        Trainer(tiny_config(epochs=2, patience=1), small_data, run, show_progress=False).fit(resume=True)
    final = Trainer(tiny_config(epochs=2, patience=4), small_data, run, show_progress=False).fit(resume=True)
    assert final["epochs_run"] == 2
    assert "patience = 4" in (run / "config.toml").read_text()
    edit_saved_state(run, stopped_early=True)
    with pytest.raises(DiffrecError, match="only for a run that has not stopped early"):
        Trainer(tiny_config(epochs=3, patience=6), small_data, run, show_progress=False).fit(resume=True)


def test_wall_time_counts_every_epoch_across_invocations(tmp_path, small_data):
    """An interrupted and resumed run reports the wall time of all its epochs, not just the last invocation's."""
    run = tmp_path / "run"
    first = Trainer(tiny_config(epochs=2), small_data, run, show_progress=False).fit()
    walls = json.loads((run / ckpt.STATE).read_text())["epoch_wall_seconds"]
    assert len(walls) == 2 and all(w > 0 for w in walls)
    assert first["wall_seconds"] >= sum(walls)
    final = Trainer(tiny_config(epochs=3), small_data, run, show_progress=False).fit(resume=True)
    walls3 = json.loads((run / ckpt.STATE).read_text())["epoch_wall_seconds"]
    assert walls3[:2] == walls and len(walls3) == 3
    assert 0 <= final["wall_seconds"] - sum(walls3) < 60  # all three epochs plus this invocation's test
    # a run whose earlier epochs were not timed reports no wall time rather than a partial one
    edit_saved_state(run, epoch_wall_seconds=walls3[1:])
    assert "wall_seconds" not in Trainer(tiny_config(epochs=4), small_data, run, show_progress=False).fit(resume=True)


def test_validation_through_another_reverse_sampler(tmp_path, small_data, monkeypatch):
    """``train.valid_reverse_sampler`` runs the per-epoch validation through its sampler (and only
    that); the final validation and test metrics use the model's own sampler, as if trained plainly."""
    from diffrec.samplers import OneStepSampler

    calls = []
    real = OneStepSampler.sample
    monkeypatch.setattr(OneStepSampler, "sample", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    plain = Trainer(tiny_config(epochs=3), small_data, tmp_path / "plain", show_progress=False).fit()
    assert not calls
    config = tiny_config(epochs=3, valid_reverse_sampler="one_step")
    trainer = Trainer(config, small_data, tmp_path / "cheap", show_progress=False)
    own = trainer.model.reverse_sampler
    final = trainer.fit()
    assert calls and trainer.model.reverse_sampler is own, "the model keeps its own sampler"
    config_back, model, _ = load_run_model(tmp_path / "cheap", torch.device("cpu"))
    assert config_back.train.valid_reverse_sampler == "one_step"
    for split in ("valid", "test"):
        assert final[split] == evaluate(model, small_data, split, config_back.eval, max_len=20, device=torch.device("cpu")).metrics
    records = {r["epoch"]: r for r in map(json.loads, (tmp_path / "cheap" / "metrics.jsonl").read_text().splitlines())}
    model.reverse_sampler = trainer._valid_sampler
    cheap = evaluate(model, small_data, "valid", config_back.eval, max_len=20, device=torch.device("cpu")).metrics
    assert records[final["best_epoch"]]["valid"] == cheap, "the epochs were validated through one_step"
    assert cheap != final["valid"], "and the final validation through the model's own DDPM chain"
    assert plain["test"].keys() == final["test"].keys()


def test_a_bad_validation_sampler_is_refused_before_anything_is_written(tmp_path, small_data):
    with pytest.raises(DiffrecError, match="one_step"):  # the error lists the valid samplers
        Trainer(tiny_config(valid_reverse_sampler="nope"), small_data, tmp_path / "bad", show_progress=False)
    sasrec = tiny_config(valid_reverse_sampler="one_step")
    sasrec.model = ModelConfig(model="sasrec", hidden_size=32, num_blocks=1, num_heads=2, max_len=20)
    with pytest.raises(DiffrecError, match="diffusion models only"):
        Trainer(sasrec, small_data, tmp_path / "sasrec", show_progress=False)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "sasrec").exists()


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("killed_at", ["state copy", "log line", "torn log line"])
def test_a_kill_between_the_checkpoints_writes_resumes_exactly(tmp_path, small_data, monkeypatch, killed_at):
    """The weights and the trainer state of an epoch are one atomic file: a process killed after
    writing it, before the readable state copy or the epoch's log line, resumes as if never killed
    (before, the weights of epoch 2 met the state of epoch 1, or no state at all)."""
    straight = tmp_path / "straight"
    want = Trainer(tiny_config(epochs=3), small_data, straight, show_progress=False).fit()
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(epochs=3), small_data, run, show_progress=False)
    real_json, real_append = ckpt.RunDir.write_json, ckpt.RunDir.append_jsonl

    def write_json(self, name, obj):
        if name == ckpt.STATE and obj["epoch"] == 2 and killed_at == "state copy":
            raise _Killed
        return real_json(self, name, obj)

    def append_jsonl(self, name, obj):
        if name == ckpt.EPOCHS and obj["epoch"] == 2 and killed_at != "state copy":
            if killed_at == "torn log line":
                with self.file(name).open("a") as fh:
                    fh.write(json.dumps(obj)[:25])
            raise _Killed
        return real_append(self, name, obj)

    monkeypatch.setattr(ckpt.RunDir, "write_json", write_json)
    monkeypatch.setattr(ckpt.RunDir, "append_jsonl", append_jsonl)
    with pytest.raises(_Killed):
        trainer.fit()
    monkeypatch.undo()
    assert json.loads((run / "trainer_state.json").read_text())["epoch"] == (1 if killed_at == "state copy" else 2)
    got = Trainer(tiny_config(epochs=3), small_data, run, show_progress=False).fit(resume=True)
    assert got["test"] == want["test"] and got["valid"] == want["valid"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    expected = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [(r["loss"], r.get("valid")) for r in records] == [(r["loss"], r.get("valid")) for r in expected]


def test_a_run_rolled_back_to_an_older_checkpoint_resumes_from_it(tmp_path, small_data):
    """A ``last.safetensors`` restored from an older copy (taken while the run trained) resumes
    from its own epoch: the log's later epochs are dropped and trained again, as a straight run."""
    want = Trainer(tiny_config(epochs=4), small_data, tmp_path / "straight", show_progress=False).fit()
    run = tmp_path / "run"
    copies = {}

    def stop_at_three(record):
        if record["epoch"] == 2:
            copies.update({name: (run / name).read_bytes() for name in (ckpt.LAST, ckpt.BEST)})
        if record["epoch"] == 3:
            raise _Killed

    with pytest.raises(_Killed):
        Trainer(tiny_config(epochs=4), small_data, run, show_progress=False, on_epoch=stop_at_three).fit()
    for name, raw in copies.items():  # the copy of epoch 2 comes back; the log still has epoch 3
        (run / name).write_bytes(raw)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    got = Trainer(tiny_config(epochs=4), small_data, run, show_progress=False).fit(resume=True)
    assert got["test"] == want["test"] and got["valid"] == want["valid"]
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


@pytest.mark.parametrize("best", ["later", "missing"])
def test_a_best_file_from_another_moment_is_refused_before_anything_is_written(tmp_path, small_data, best):
    run = tmp_path / "run"
    Trainer(tiny_config(epochs=3), small_data, run, show_progress=False).fit()
    edit_saved_state(run, epoch=1, best_epoch=1)  # as if last.safetensors were an old copy
    (run / "metrics.json").unlink()
    if best == "later":  # model.safetensors of epoch 3, two epochs past the checkpoint
        tensors, meta = ckpt.load_tensors_and_metadata(run / ckpt.BEST)
        assert meta[ckpt.BEST_EPOCH_META] in ("2", "3")
        ckpt.atomic_save_tensors(tensors, run / ckpt.BEST, metadata={ckpt.BEST_EPOCH_META: "3"})
        match = r"holds the weights of epoch 3, but last.safetensors \(epoch 1\) names epoch 1 as the best"
    else:
        (run / ckpt.BEST).unlink()
        match = r"has no model.safetensors, the best weights \(epoch 1\)"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(DiffrecError, match=match):
        Trainer(tiny_config(epochs=3), small_data, run, show_progress=False).fit(resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    if best == "later":  # the epoch after the checkpoint's is allowed: a kill between the two writes
        ckpt.atomic_save_tensors(ckpt.load_tensors(run / ckpt.BEST), run / ckpt.BEST, metadata={ckpt.BEST_EPOCH_META: "2"})
        assert Trainer(tiny_config(epochs=3), small_data, run, show_progress=False).fit(resume=True)["epochs_run"] == 3
