import dataclasses
import json

import pytest

from diffrec.data import make_synthetic
from diffrec.errors import DiffrecError
from diffrec.reproduce import PRESETS, RECIPES, markdown_table, paired_t_test, preset_config, reproduce
from diffrec.registry import load_builtin_parts, registry
from diffrec.building import build_model
from diffrec.config import step_lr

load_builtin_parts()


def write_sequences(path, data):
    path.mkdir(parents=True)
    lines = [" ".join(map(str, [u + 1, *seq])) for u, seq in enumerate(data.sequences)]
    (path / "sequences.txt").write_text("\n".join(lines) + "\n")


def tiny(config):
    config.model.hidden_size = 16
    config.model.num_blocks = 1
    config.model.num_heads = 2
    config.model.max_len = 10
    if "emb_init_std" in config.model.declared():  # a setting of the diffusion models only
        config.model.emb_init_std = 0.05
    config.train.epochs = 1
    config.train.batch_size = 256
    config.eval.batch_size = 256


def test_reproduce_writes_summary_and_reuses_runs(tmp_path):
    root = tmp_path / "datasets"
    write_sequences(root / "beauty", make_synthetic(num_users=300, num_items=60, seed=4))
    logs = []
    kwargs = dict(models=["diffurec", "diffurec-lambda0"], seeds=[1, 2], data_root=root, out_dir=tmp_path / "out", overrides=tiny, show_progress=False, log=logs.append)
    summary = reproduce("beauty", **kwargs)
    saved = json.loads((tmp_path / "out" / "beauty.json").read_text())
    assert saved["models"].keys() == {"diffurec", "diffurec-lambda0"}
    entry = saved["models"]["diffurec-lambda0"]
    assert [r["seed"] for r in entry["runs"]] == [1, 2]
    assert set(entry["test"]["HR@10"]) == {"mean", "std"}
    assert "t_test_vs_diffurec" in entry and "HR@10" in entry["t_test_vs_diffurec"]
    assert saved["git_sha"] and saved["machine"] and saved["wall_seconds"] > 0
    assert "diffrec train --config" in entry["runs"][0]["command"]
    assert saved["paper"]["diffurec"]["HR@10"] == pytest.approx(7.9068)
    table = markdown_table(summary)
    assert "| diffurec-lambda0 | 2 | 1 |" in table and "paper: diffurec" in table
    from typer.testing import CliRunner

    from diffrec.cli.main import app

    printed = CliRunner().invoke(app, ["reproduce", "--dataset", "beauty", "--table-only", "--out", str(tmp_path / "out")])
    assert printed.exit_code == 0 and "| diffurec-lambda0 | 2 | 1 |" in printed.output
    logs.clear()
    reproduce("beauty", **kwargs)
    assert all("reusing" in line for line in logs) and len(logs) == 4

    def longer(config):
        tiny(config)
        config.train.epochs = 2

    logs.clear()
    extended = reproduce("beauty", **{**kwargs, "models": ["diffurec"], "seeds": [1], "overrides": longer})
    assert logs == [f"diffurec seed 1: resuming in {tmp_path / 'out' / 'runs' / 'beauty' / 'paper' / 'diffurec' / 'seed1'}"]
    assert extended["models"]["diffurec"]["runs"][0]["epochs_run"] == 2

    # an unfinished run resumed with a smaller budget keeps its own, and says so
    run_dir = tmp_path / "out" / "runs" / "beauty" / "paper" / "diffurec" / "seed1"
    (run_dir / "metrics.json").unlink()  # as if stopped after its last epoch, before testing
    logs.clear()
    resumed = reproduce("beauty", **{**kwargs, "models": ["diffurec"], "seeds": [1]})
    assert logs[0] == "diffurec seed 1: keeps its epochs of 2; a resumed run is never shortened (asked for 1)"
    assert resumed["models"]["diffurec"]["runs"][0]["epochs_run"] == 2

    def longer_on_one_thread(config):
        longer(config)
        config.train.epochs = 3
        config.train.num_threads = 1

    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        again = reproduce("beauty", **{**kwargs, "models": ["diffurec"], "seeds": [1], "overrides": longer_on_one_thread})
        assert again["models"]["diffurec"]["runs"][0]["threads"] == 1  # the invocation's threads, not the stored run's
    finally:
        torch.set_num_threads(before)


def test_presets_and_errors():
    config = preset_config("diffurec-keypad", "ml-1m", "fast", 7, "x")
    assert config.model.attention_mask == "key_padding" and config.model.max_len == 200
    assert config.model.emb_init_std == 0.05 and config.train.seed == 7
    assert preset_config("diffurec-lambda0", "beauty", "paper", 1, "x").model.delta == 0.0
    assert preset_config("diffurec-1step", "beauty", "paper", 1, "x").model.reverse_sampler == "one_step"
    with pytest.raises(DiffrecError, match="unknown model preset"):
        preset_config("nope", "beauty", "paper", 1, "x")
    assert "sasrec-ce" in PRESETS
    own = preset_config("sasrec-own", "beauty", "sequence", 1, "x").model  # SASRec's Amazon settings
    assert (own.loss, own.hidden_size, own.num_blocks, own.num_heads, own.dropout, own.emb_dropout) == ("bce", 50, 2, 1, 0.5, 0.5)
    ml = preset_config("sasrec-own-ml1m", "ml-1m", "sequence", 1, "x").model  # SASRec's MovieLens settings
    assert (ml.loss, ml.hidden_size, ml.num_blocks, ml.num_heads, ml.dropout, ml.emb_dropout, ml.max_len) == ("bce", 50, 2, 1, 0.2, 0.2, 200)
    caser = preset_config("caser-own", "beauty", "paper", 1, "x").model  # Caser's own settings
    assert (caser.loss, caser.hidden_size, caser.dropout, caser.settings) == ("bce", 50, 0.5, {"objective": "native", "window": 5, "n_h": 16, "n_v": 4})
    bert = preset_config("bert4rec-own", "beauty", "sequence", 1, "x")  # BERT4Rec's Beauty settings
    assert (bert.model.hidden_size, bert.model.num_blocks, bert.model.num_heads, bert.model.dropout, bert.model.settings) == (64, 2, 2, 0.1, {"objective": "native", "mask_prob": 0.6})
    assert bert.train.examples == "sequence"
    pos = preset_config("diffurec-pos", "beauty", "fast", 1, "x")
    assert pos.model.position_embedding and build_model(pos, 30).trims_padding_exactly  # bucketing stays exact
    drop = preset_config("diffurec-dropout", "beauty", "fast", 1, "x").model
    assert (drop.dropout, drop.emb_dropout, drop.attention_mask) == (0.2, 0.3, "official")  # only the block dropout moves
    nodrop = preset_config("diffurec-nodropout", "beauty", "fast", 1, "x").model
    assert (nodrop.dropout, nodrop.emb_dropout, nodrop.attention_mask) == (0.0, 0.3, "official")
    for name, rate in (("diffurec-embdrop0.2", 0.2), ("diffurec-embdrop0.5", 0.5)):  # only the embedding dropout moves
        emb = preset_config(name, "beauty", "fast", 1, "x").model
        assert (emb.dropout, emb.emb_dropout, emb.emb_init_std, emb.attention_mask) == (0.1, rate, 0.05, "official")
    for name, loss in (("dreamrec", "mse"), ("dreamrec-ce", "ce"), ("dreamrec-cosine", "cosine")):  # only the objective moves
        dream = preset_config(name, "beauty", "dreamrec", 1, "x").model
        assert (dream.loss, dream.hidden_size, dream.num_blocks, dream.p_uncond, dream.diffusion_steps) == (loss, 64, 1, 0.1, 200)
    cos = preset_config("preferdiff-cosine", "beauty", "preferdiff", 1, "x").to_dict()["model"]  # the README's error, else preferdiff
    base = preset_config("preferdiff", "beauty", "preferdiff", 1, "x").to_dict()["model"]
    assert cos["loss"] == "cosine" and base["loss"] == "mse" and {**cos, "loss": "mse"} == base
    tuned = preset_config("dreamrec-ce-tuned", "beauty", "sequence", 1, "x")  # BSARec's encoder settings, a target at every position
    assert (tuned.model.loss, tuned.model.num_blocks, tuned.model.dropout, tuned.model.emb_dropout, tuned.model.emb_init_std, tuned.train.examples) == ("ce", 2, 0.5, 0.5, 0.05, "sequence")
    fastpath = preset_config("diffurec-fastpath", "beauty", "fast", 1, "x").model
    assert (fastpath.dropout_rng, fastpath.approximator, fastpath.dropout, fastpath.emb_dropout) == (
        "counter", {"name": "transformer", "last_block_output_only": True}, 0.1, 0.3
    )
    model = build_model(preset_config("diffurec-fastpath", "beauty", "fast", 1, "x"), 30)
    assert model.approximator.last_block_output_only and {m.rng for m in model.modules() if hasattr(m, "rng")} == {"counter"}
    stosa = preset_config("stosa-own", "beauty", "sequence", 1, "x").model  # STOSA's Beauty settings
    assert (stosa.loss, stosa.hidden_size, stosa.num_blocks, stosa.num_heads, stosa.dropout, stosa.emb_dropout, stosa.settings) == (
        "bpr", 64, 1, 4, 0.3, 0.3, {"objective": "native", "pvn_weight": 0.005, "attn_dropout": 0.0}
    )
    with pytest.raises(DiffrecError, match="unknown recipe 'slow'; valid choices: paper, fast, long"):
        preset_config("diffurec", "beauty", "slow", 1, "x")


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_under_every_recipe(name, recipe):
    sequence = RECIPES[recipe]["train"].get("examples") == "sequence"
    settings = preset_config(name, "toys", "paper", 3, "x").model  # the preset's model, on prefix examples
    if sequence and not registry("model").get(PRESETS[name].model).takes_sequence_examples(settings):
        with pytest.raises(DiffrecError, match="does not support"):
            preset_config(name, "toys", recipe, 3, "x")
        return
    config = preset_config(name, "toys", recipe, 3, "x")
    if sequence:  # its settings hold together (e.g. own-position injection with a causal approximator)
        build_model(config, 10)
    assert config.model.model == PRESETS[name].model and config.train.seed == 3
    for key, value in RECIPES[recipe]["train"].items():
        assert getattr(config.train, key) == value
    if sequence or recipe in ("bsarec", "dreamrec", "preferdiff"):  # these papers' schedules: a constant learning rate over the whole budget
        assert {step_lr(config.train, e) for e in range(config.train.epochs)} == {config.train.lr}
    elif recipe != "paper":
        assert config.train.lr_step < config.train.epochs  # the decay happens within the budget


@pytest.mark.parametrize("recipe,changes", [("fast-2x", {"lr": 2e-3, "warmup_steps": 500}), ("fast-b1024", {"batch_size": 1024})])
def test_derived_recipes_change_only_what_they_name(recipe, changes):
    fast, derived = preset_config("diffurec", "beauty", "fast", 1, "x"), preset_config("diffurec", "beauty", recipe, 1, "x")
    assert derived.model == fast.model
    differ = {f.name: getattr(derived.train, f.name) for f in dataclasses.fields(fast.train) if getattr(derived.train, f.name) != getattr(fast.train, f.name)}
    assert differ == changes


def test_sequence_recipe_is_refused_before_training_for_prefix_only_presets(tmp_path):
    data_root = tmp_path / "data"
    with pytest.raises(DiffrecError, match="'diffurec' does not support"):
        reproduce("beauty", models=["sasrec", "diffurec"], seeds=[1997], data_root=data_root, out_dir=tmp_path / "out", recipe="sequence")
    assert not (tmp_path / "out").exists()


def test_sequence_recipe_trains_its_presets_on_sequence_examples(tmp_path):
    root = tmp_path / "datasets"
    write_sequences(root / "toys", make_synthetic(num_users=200, num_items=40, seed=5))
    summary = reproduce("toys", models=["sasrec", "gru4rec-ce"], seeds=[1], data_root=root, out_dir=tmp_path / "out", recipe="sequence", overrides=tiny, show_progress=False, log=lambda _: None)
    assert summary["models"].keys() == {"sasrec@sequence", "gru4rec-ce@sequence"}
    for name in ("sasrec", "gru4rec-ce"):
        config = (tmp_path / "out" / "runs" / "toys" / "sequence" / name / "seed1" / "config.toml").read_text()
        assert 'examples = "sequence"' in config


def test_paired_t_test():
    assert paired_t_test([1.0], [2.0]) is None
    assert paired_t_test([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]) is None  # constant difference: undefined
    p = paired_t_test([5.0, 6.0, 7.0, 6.5], [4.0, 5.5, 5.0, 6.0])
    assert 0 < p < 0.2


def test_one_step_control_reevaluates_the_trained_run(tmp_path):
    root = tmp_path / "datasets"
    write_sequences(root / "toys", make_synthetic(num_users=300, num_items=60, seed=5))
    logs = []
    kwargs = dict(seeds=[3], data_root=root, out_dir=tmp_path / "out", overrides=tiny, show_progress=False, log=logs.append, recipe="fast")
    with pytest.raises(DiffrecError, match="has not finished"):
        reproduce("toys", models=["diffurec-1step"], **kwargs)
    summary = reproduce("toys", models=["diffurec-1step", "diffurec"], **kwargs)
    assert logs[0].startswith("diffurec seed 3: training") and logs[1].startswith("diffurec-1step seed 3: re-evaluating")
    assert list(summary["models"]) == ["diffurec@fast", "diffurec-1step@fast"]
    control = summary["models"]["diffurec-1step@fast"]
    run = control["runs"][0]
    base_dir = tmp_path / "out" / "runs" / "toys" / "fast" / "diffurec" / "seed3"
    assert run["reevaluates"] == str(base_dir) and "--reverse-sampler one_step" in run["command"]

    # the control's numbers are the trained weights evaluated with one reverse step
    from diffrec.config import RunConfig
    from diffrec.data import load_dataset
    from diffrec.evaluation import evaluate
    from diffrec.registry import registry
    from diffrec.building import load_run_model

    cfg, model, _ = load_run_model(base_dir, __import__("torch").device("cpu"))
    model.reverse_sampler = registry("reverse_sampler").build_from("one_step", config=cfg.model)
    expected = evaluate(model, load_dataset(root / "toys"), "test", cfg.eval, max_len=cfg.model.max_len, device="cpu").metrics
    assert run["test"] == pytest.approx(expected)
    assert RunConfig.load(tmp_path / "out" / "runs" / "toys" / "fast" / "diffurec-1step" / "seed3" / "config.toml").model.reverse_sampler == "one_step"

    # a later reproduction of another model keeps both entries and their t-test reference
    logs.clear()
    merged = reproduce("toys", models=["diffurec-lambda0"], **kwargs)
    assert set(merged["models"]) == {"diffurec@fast", "diffurec-1step@fast", "diffurec-lambda0@fast"}
    saved = json.loads((tmp_path / "out" / "toys.json").read_text())
    assert "t_test_vs_diffurec@fast" in saved["models"]["diffurec-lambda0@fast"]
    logs.clear()
    reproduce("toys", models=["diffurec-1step"], **kwargs)
    assert logs == [f"diffurec-1step seed 3: reusing {tmp_path / 'out' / 'runs' / 'toys' / 'fast' / 'diffurec-1step' / 'seed3'}"]


def test_reproduce_refuses_a_run_directory_with_other_settings(tmp_path):
    root = tmp_path / "datasets"
    write_sequences(root / "beauty", make_synthetic(num_users=200, num_items=40, seed=6))
    kwargs = dict(models=["diffurec"], seeds=[1], data_root=root, out_dir=tmp_path / "out", show_progress=False, log=lambda _: None)
    reproduce("beauty", overrides=tiny, **kwargs)

    def wider(config):
        tiny(config)
        config.model.hidden_size = 32

    with pytest.raises(DiffrecError, match="holds a run with other settings \\(hidden_size\\)"):
        reproduce("beauty", overrides=wider, **kwargs)


def test_a_summary_written_meanwhile_is_kept(tmp_path):
    """Two reproductions of one dataset side by side: the one that finishes last keeps the other's entry."""
    root = tmp_path / "datasets"
    write_sequences(root / "beauty", make_synthetic(num_users=200, num_items=40, seed=7))
    kwargs = dict(seeds=[1], data_root=root, out_dir=tmp_path / "out", show_progress=False, log=lambda _: None)
    nested = []

    def meanwhile(config):
        tiny(config)
        if not nested:  # while this invocation trains, another one finishes and writes the summary
            nested.append(reproduce("beauty", models=["diffurec-lambda0"], overrides=tiny, **kwargs))

    reproduce("beauty", models=["diffurec"], overrides=meanwhile, **kwargs)
    saved = json.loads((tmp_path / "out" / "beauty.json").read_text())
    assert set(saved["models"]) == {"diffurec", "diffurec-lambda0"}
    assert "t_test_vs_diffurec" in saved["models"]["diffurec-lambda0"]


def test_seeds_accumulate_across_invocations(tmp_path):
    """A later invocation with another seed adds to the table instead of replacing the earlier seeds."""
    root = tmp_path / "datasets"
    write_sequences(root / "beauty", make_synthetic(num_users=200, num_items=40, seed=7))
    kwargs = dict(models=["diffurec", "diffurec-lambda0"], data_root=root, out_dir=tmp_path / "out", overrides=tiny, show_progress=False, log=lambda _: None)
    first = reproduce("beauty", seeds=[1], **kwargs)
    reproduce("beauty", seeds=[2], **kwargs)
    saved = json.loads((tmp_path / "out" / "beauty.json").read_text())
    for name in ("diffurec", "diffurec-lambda0"):
        entry = saved["models"][name]
        assert [r["seed"] for r in entry["runs"]] == [1, 2]
        assert entry["runs"][0]["test"] == first["models"][name]["runs"][0]["test"]
        hr = [r["test"]["HR@10"] for r in entry["runs"]]
        assert entry["test"]["HR@10"]["mean"] == pytest.approx(sum(hr) / 2)
        assert entry["test"]["HR@10"]["std"] == pytest.approx(abs(hr[0] - hr[1]) / 2**0.5)
    assert set(saved["models"]["diffurec-lambda0"]["t_test_vs_diffurec"]) == {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"}
    reproduce("beauty", seeds=[2], recipe="fast", **kwargs)  # another recipe is another entry
    saved = json.loads((tmp_path / "out" / "beauty.json").read_text())
    assert [r["seed"] for r in saved["models"]["diffurec@fast"]["runs"]] == [2]
    assert [r["seed"] for r in saved["models"]["diffurec"]["runs"]] == [1, 2]


def test_summary_merge_waits_for_a_concurrent_writer(tmp_path):
    """Two processes adding seeds to one table: the later merge waits for the earlier write and keeps it."""
    import threading
    import time

    from diffrec import checkpoint as ckpt

    root = tmp_path / "datasets"
    write_sequences(root / "beauty", make_synthetic(num_users=200, num_items=40, seed=7))
    out = tmp_path / "out"
    kwargs = dict(models=["diffurec"], data_root=root, out_dir=out, overrides=tiny, show_progress=False, log=lambda _: None)
    reproduce("beauty", seeds=[1], **kwargs)
    summary = out / "beauty.json"
    errors = []

    def second_process():
        try:
            reproduce("beauty", seeds=[2], **kwargs)
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    with ckpt.waiting_lock(out / ".beauty.json.lock"):  # a concurrent writer holds the summary
        worker = threading.Thread(target=second_process)
        worker.start()
        finished = out / "runs" / "beauty" / "paper" / "diffurec" / "seed2" / ckpt.FINAL
        deadline = time.monotonic() + 120
        while not finished.exists() and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.05)
        worker.join(timeout=1.0)
        assert worker.is_alive(), "the merge did not wait for the lock"
        saved = json.loads(summary.read_text())
        assert [r["seed"] for r in saved["models"]["diffurec"]["runs"]] == [1]
        saved["models"]["other"] = {**saved["models"]["diffurec"], "model": "other"}
        summary.write_text(json.dumps(saved))  # the concurrent writer's update
    worker.join(timeout=120)
    assert not worker.is_alive() and not errors
    saved = json.loads(summary.read_text())
    assert [r["seed"] for r in saved["models"]["diffurec"]["runs"]] == [1, 2]
    assert "other" in saved["models"]
    assert not list(out.glob("*.tmp"))


def test_extending_a_run_keeps_its_larger_patience(tmp_path):
    """A later invocation without the earlier --patience extends the run instead of refusing it."""
    root = tmp_path / "datasets"
    write_sequences(root / "beauty", make_synthetic(num_users=200, num_items=40, seed=7))
    kwargs = dict(models=["diffurec"], seeds=[1], data_root=root, out_dir=tmp_path / "out", show_progress=False, log=lambda _: None)

    def patient(config):
        tiny(config)
        config.train.patience = 9

    def longer(config):
        tiny(config)
        config.train.epochs = 2

    reproduce("beauty", overrides=patient, **kwargs)
    extended = reproduce("beauty", overrides=longer, **kwargs)
    assert extended["models"]["diffurec"]["runs"][0]["epochs_run"] == 2
    config = (tmp_path / "out" / "runs" / "beauty" / "paper" / "diffurec" / "seed1" / "config.toml").read_text()
    assert "patience = 9" in config and "epochs = 2" in config


def _entry(recipe, per_seed):
    runs = [{"seed": s, "epochs_run": 3, "wall_seconds": 10.0, "test": {k: v for k in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")}} for s, v in per_seed.items()]
    from diffrec.reproduce import aggregate

    return {"recipe": recipe, "runs": runs, "test": aggregate([r["test"] for r in runs])}


def test_table_tests_against_a_chosen_reference(tmp_path):
    """``--reference`` makes the printed t-tests compare every entry with one entry, over shared seeds."""
    from scipy import stats
    from typer.testing import CliRunner

    from diffrec.cli.main import app

    summary = {
        "models": {
            "diffurec@fast": _entry("fast", {1: 8.0, 2: 8.2, 3: 8.1}),
            "diffurec@long": _entry("long", {1: 7.9, 2: 7.95, 3: 8.3, 4: 1.0}),  # seed 4 has no pair
            "sasrec@long": _entry("long", {5: 1.0}),
        },
        "paper": {},
    }
    table = markdown_table(summary, "diffurec@fast")
    assert "p HR@10 vs diffurec@fast" in table
    expected = stats.ttest_rel([8.0, 8.2, 8.1], [7.9, 7.95, 8.3]).pvalue
    row = next(line for line in table.splitlines() if line.startswith("| diffurec@long |"))
    assert row.split(" | ")[-3:-1] == [f"{expected:.3g}"] * 2
    assert next(line for line in table.splitlines() if line.startswith("| sasrec@long |")).split(" | ")[-3:-1] == ["n/a", "n/a"]
    assert next(line for line in table.splitlines() if line.startswith("| diffurec@fast |")).split(" | ")[-3:-1] == ["n/a", "n/a"]
    assert "p HR@10 vs DiffuRec" in markdown_table(summary)  # default: the stored same-recipe tests
    with pytest.raises(DiffrecError, match="valid choices: diffurec@fast, diffurec@long"):
        markdown_table(summary, "diffurec")
    (tmp_path / "beauty.json").write_text(json.dumps(summary))
    runner = CliRunner()
    ok = runner.invoke(app, ["reproduce", "--dataset", "beauty", "--table-only", "--out", str(tmp_path), "--reference", "diffurec@fast"])
    assert ok.exit_code == 0 and f"| {expected:.3g} | {expected:.3g} |" in ok.output
    bad = runner.invoke(app, ["reproduce", "--dataset", "beauty", "--table-only", "--out", str(tmp_path), "--reference", "nope"])
    assert bad.exit_code != 0 and "no entry 'nope'" in bad.output and "Traceback" not in bad.output


def test_the_reference_can_come_from_another_summary(tmp_path):
    """``--reference-summary``: runs kept in another ``--out`` (bf16 beside fp32) are tested against its entry, printed first."""
    from scipy import stats
    from typer.testing import CliRunner

    from diffrec.cli.main import app

    (tmp_path / "fp32").mkdir()
    (tmp_path / "bf16").mkdir()
    fp32 = tmp_path / "fp32" / "beauty.json"
    fp32.write_text(json.dumps({"models": {"diffurec@fast": _entry("fast", {1: 8.0, 2: 8.2, 3: 8.1})}, "paper": {}}))
    (tmp_path / "bf16" / "beauty.json").write_text(json.dumps({"models": {"diffurec-fastpath@fast": _entry("fast", {1: 8.1, 2: 8.15, 3: 8.4})}, "paper": {}}))
    runner = CliRunner()
    base = ["reproduce", "--dataset", "beauty", "--table-only", "--out", str(tmp_path / "bf16")]
    ok = runner.invoke(app, [*base, "--reference", "diffurec@fast", "--reference-summary", str(fp32)])
    assert ok.exit_code == 0, ok.output
    rows = [line for line in ok.output.splitlines() if line.startswith("| diffurec")]
    assert rows[0].startswith(f"| diffurec@fast ({fp32}) | 3 |") and rows[1].startswith("| diffurec-fastpath@fast | 3 |")
    expected = stats.ttest_rel([8.0, 8.2, 8.1], [8.1, 8.15, 8.4]).pvalue
    assert rows[1].split(" | ")[-3:-1] == [f"{expected:.3g}"] * 2
    for extra, message in [
        (["--reference", "nope", "--reference-summary", str(fp32)], "'nope' is not in"),
        (["--reference-summary", str(fp32)], "needs --reference"),
        (["--reference", "diffurec@fast", "--reference-summary", str(tmp_path / "missing.json")], "not found"),
    ]:
        bad = runner.invoke(app, [*base, *extra])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, bad.output


def test_unknown_reference_is_refused_before_training(tmp_path):
    from typer.testing import CliRunner

    from diffrec.cli.main import app

    write_sequences(tmp_path / "datasets" / "beauty", make_synthetic(num_users=50, num_items=20, seed=1))
    args = ["reproduce", "--dataset", "beauty", "--models", "sasrec", "--data-root", str(tmp_path / "datasets"), "--out", str(tmp_path / "out"), "--epochs", "1"]
    bad = CliRunner().invoke(app, [*args, "--reference", "diffurec@fast"])
    assert bad.exit_code != 0 and "--reference 'diffurec@fast'" in bad.output and "valid choices: sasrec" in bad.output
    assert not (tmp_path / "out").exists()


def test_runs_without_a_checkpoint(tmp_path):
    """A run stopped in its first epoch starts over; one whose checkpoint is gone (a fresh checkout
    keeps configs and metrics only) is neither extended nor overwritten."""
    from diffrec import checkpoint as ckpt

    root = tmp_path / "datasets"
    write_sequences(root / "beauty", make_synthetic(num_users=120, num_items=30, seed=2))
    kwargs = dict(models=["sasrec"], seeds=[1], data_root=root, out_dir=tmp_path / "out", show_progress=False, log=lambda _: None)
    run_dir = tmp_path / "out" / "runs" / "beauty" / "paper" / "sasrec" / "seed1"
    run_dir.mkdir(parents=True)
    config = preset_config("sasrec", "beauty", "paper", 1, str(root / "beauty"))
    tiny(config)
    config.save(run_dir / ckpt.CONFIG)  # what a run interrupted before its first epoch leaves
    (run_dir / ckpt.DATASET).write_text("{}")
    summary = reproduce("beauty", overrides=tiny, **kwargs)
    assert summary["models"]["sasrec"]["runs"][0]["epochs_run"] == 1
    (run_dir / ckpt.LAST).unlink()
    saved = (run_dir / ckpt.FINAL).read_text()

    def longer(config):
        tiny(config)
        config.train.epochs = 2

    with pytest.raises(DiffrecError, match=r"finished after 1 epochs; extending it to 2 needs its checkpoint last.safetensors"):
        reproduce("beauty", overrides=longer, **kwargs)
    assert (run_dir / ckpt.FINAL).read_text() == saved
    assert reproduce("beauty", overrides=tiny, **kwargs)["models"]["sasrec"]["runs"][0]["epochs_run"] == 1  # reuse still works
    (run_dir / ckpt.FINAL).unlink()  # an unfinished run whose checkpoint is gone
    with pytest.raises(DiffrecError, match="holds trained epochs but no checkpoint"):
        reproduce("beauty", overrides=longer, **kwargs)
    assert (run_dir / ckpt.EPOCHS).read_text().strip()
