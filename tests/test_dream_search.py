"""benchmarks/dream_search.py: PPO from a C in a run's dream, both Cs scored for real."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_evolve import make_run, tiny_config
from test_ppo import tiny_ppo

from dreamgym.train import evolve

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dream_search.py"
spec = importlib.util.spec_from_file_location("dream_search", SCRIPT)
dream_search = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dream_search)

pytest.importorskip("stable_baselines3")
torch.set_num_threads(1)


@pytest.mark.slow
def test_search_scores_the_start_and_the_kept_c_on_the_same_real_episodes(tmp_path):
    pytest.importorskip("vizdoom")
    run_dir = make_run(tmp_path)
    start = evolve.run(tiny_config(generations=2), run_dir)
    config = tiny_ppo(init=str(start), timesteps=512, log_std_init=0.0)
    r = dream_search.measure(run_dir, config, episodes=2, seed=7, workers=1, real_max_steps=15)
    rows = [json.loads(x) for x in (Path(r["ppo"]) / "metrics.jsonl").read_text().splitlines()]
    assert r["start"]["dream"] == rows[0]["dream_score"]
    assert r["kept"]["dream"] == max(x["dream_score"] for x in rows)  # kept by its dream score
    assert r["kept_at"] in [x["timesteps"] for x in rows] and r["real_seeds"] == [7, 8]
    for name, folder in (("start", start), ("kept", Path(r["ppo"]))):
        report = json.loads((folder / "evaluate_real_seeds7.json").read_text())
        assert report["seeds"] == [7, 8] and r[name]["real"] == report["mean"]
        assert 0 < report["mean"] <= 15  # Doom pays +1 a tic, 15 tics at most
    assert r["real_gain"] == r["kept"]["real"] - r["start"]["real"]
    assert r["real_ratio"] == r["kept"]["real"] / r["start"]["real"]
    assert r["dream_ratio"] == r["kept"]["dream"] / r["start"]["dream"]
    assert r["held_out_gain"] is None and r["start"]["held_out"] is None
    assert r["timesteps"] == 512 and "kept - start: dream +" in dream_search.format_result(r)


def test_the_table_says_what_kept_c_and_has_no_ratio_of_a_start_below_zero():
    c = {"controller": "c", "real_ci95": None}
    r = {"real_seeds": [0, 0], "kept_at": 0, "timesteps": 10,
         "start": {**c, "dream": -5.0, "held_out": 40.0, "real": -20.0},
         "kept": {**c, "dream": 5.0, "held_out": 50.0, "real": 30.0},
         "dream_gain": 10.0, "dream_ratio": None, "held_out_gain": 10.0, "held_out_ratio": 1.25,
         "real_gain": 50.0, "real_ratio": None}  # fmt: skip
    table = dream_search.format_result(r)
    assert "| held-out dreams |" in table and "| start | -5.0 | 40.0 | -20.0 |" in table
    assert table.endswith("dream +10.0, held_out +10.0 (1.25x), real +50.0")


def test_search_needs_a_start():
    with pytest.raises(ValueError, match="init: name the controller"):
        dream_search.measure("unused", tiny_ppo(), episodes=1, seed=0)
