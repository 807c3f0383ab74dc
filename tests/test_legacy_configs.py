"""Configs written before model settings were declared per model still load, validate and replay.

``tests/data/legacy_runs`` holds the config and final metrics of two tiny runs written by the
code of that time (the flat ModelConfig: every DiffuRec field in every model's config, a
baseline's settings under ``[model.options]``). Replaying them gives the same metrics to the
last digit; and every run config kept under ``benchmarks/results/runs`` still validates and is
recognised by ``diffrec reproduce`` as the run of its preset.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from typer.testing import CliRunner

from diffrec.cli.main import app
from diffrec.config import RunConfig

HERE = pathlib.Path(__file__).resolve().parent
LEGACY = HERE / "data" / "legacy_runs"
RUNS = HERE.parent / "benchmarks" / "results" / "runs"


@pytest.mark.parametrize("name", ["diffurec", "bert4rec"])
def test_a_legacy_config_replays_to_the_same_metrics(name, tmp_path):
    out = tmp_path / name
    result = CliRunner().invoke(app, ["train", "--config", str(LEGACY / name / "config.toml"), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    want = json.loads((LEGACY / name / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert got["valid"] == want["valid"] and got["test"] == want["test"]


def _stored_runs():
    return sorted(RUNS.glob("*/*/*/seed*/config.toml")) if RUNS.is_dir() else []


@pytest.mark.parametrize("path", _stored_runs(), ids=lambda p: "/".join(p.parts[-5:-1]))
def test_every_stored_run_config_validates_and_matches_its_preset(path):
    from diffrec.reproduce import PRESETS, RECIPES, _check_same_run, preset_config

    dataset, recipe, preset, seed = path.parts[-5:-1]
    stored = RunConfig.load(path).validate()
    if preset not in PRESETS or recipe not in RECIPES or PRESETS[preset].reevaluates:
        return
    wanted = preset_config(preset, dataset, recipe, int(seed[4:]), stored.data.path)
    _check_same_run(stored, wanted, path.parent)
