"""The dream-honesty benchmark: rank correlation, controllers seeing other dreams, the panel."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_world_model
from gymnasium.utils.seeding import np_random

from dreamgym.controller import batched_forward
from dreamgym.dream import DreamEnv
from dreamgym.policy import controller_config, save_controller
from dreamgym.rollouts import dream_rollouts
from dreamgym.train import panel as panel_mod
from dreamgym.train.cross_dream import ControllerActor, FixedPolicy, cross_dream_returns, sight
from dreamgym.train.panel import (
    RealScores,
    add_controller,
    cache_key,
    content_hash,
    import_report,
    load_panel,
    rankdata,
    real_returns,
    spearman,
)
from dreamgym.wrappers import LatentObservation

GAMES = ("doom_take_cover", "car_racing")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dream_honesty.py"


def controller(wm, seed: int) -> ControllerActor:
    cfg = controller_config(wm)
    g = torch.Generator().manual_seed(seed)
    return ControllerActor(0.3 * torch.randn(cfg.num_params, generator=g), cfg, wm)


# ---------------------------------------------------------------- Spearman


def test_spearman_known_answers():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 24 / 120
    assert spearman([10, 20, 30, 40, 50], [1, 3, 2, 5, 4]) == pytest.approx(0.8)
    # ties take the mean rank: scipy.stats.spearmanr gives 0.8207826816681233
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    np.testing.assert_array_equal(rankdata([3, 1, 4, 1, 5]), [3, 1.5, 4, 1.5, 5])
    assert np.isnan(spearman([1, 2, 3], [7, 7, 7]))
    assert spearman([0.5, 9.0, 2.0], np.exp([0.5, 9.0, 2.0])) == pytest.approx(1.0)  # monotone


# ---------------------------------------------------------------- seeing another dream


@pytest.mark.parametrize("game", GAMES)
def test_pixel_path_is_own_v_and_m_on_the_dream_frames(game):
    """One dream through the pixel path = LatentObservation (the controller's own V and M,
    as in the real game) wrapped around the dream's pixel observations."""
    dream = tiny_world_model(game, seed=0, done_bias=-2.0)
    own = tiny_world_model(game, seed=1)
    actor = controller(own, seed=3)
    assert sight(dream, own) == "pixels"
    lengths = []
    for s in (0, 1):
        env = LatentObservation(
            DreamEnv(game, dream, obs_mode="pixels", max_episode_steps=30), own, 30
        )
        obs, _ = env.reset(seed=s)
        total, done, steps = 0.0, False, 0
        while not done:
            x = torch.as_tensor(obs).view(1, 1, -1)
            y = batched_forward(actor.config, actor.params[None], x)[0, 0]
            obs, r, term, trunc, _ = env.step(own.game.controller_to_action(y).numpy())
            total, done, steps = total + r, term or trunc, steps + 1
        rng, _ = np_random(s)  # how DreamEnv seeds its generator from reset(seed=s)
        g = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        ret, how = cross_dream_returns(
            dream, actor, 1, 1.0, g, torch.Generator().manual_seed(s), max_steps=30
        )
        assert how == "pixels"
        np.testing.assert_allclose(ret[0], total, rtol=1e-6)
        lengths.append(steps)
    assert sum(lengths) > 4, lengths


@pytest.mark.parametrize("game", GAMES)
def test_latent_and_follow_paths_are_the_dream_rollouts_of_evaluate(game):
    wm = tiny_world_model(game, seed=0)
    other_m = tiny_world_model(game, seed=5)
    other_m.vae.load_state_dict(wm.vae.state_dict())  # same V, another M
    actor = controller(wm, seed=4)
    for dream, world, expected in ((wm, None, "latent"), (other_m, other_m, "follow")):
        ret, how = cross_dream_returns(dream, actor, 16, 1.0, torch.Generator().manual_seed(7))
        ref, _ = dream_rollouts(
            wm, actor.params[None], 16, 1.0, torch.Generator().manual_seed(7), world=world
        )
        assert how == expected
        np.testing.assert_allclose(ret, ref[0].numpy(), rtol=1e-6)
    forced, how = cross_dream_returns(wm, actor, 16, 1.0, torch.Generator(), force="pixels")
    assert how == "pixels" and forced.shape == (16,)
    with pytest.raises(ValueError, match="force"):
        cross_dream_returns(other_m, actor, 4, 1.0, torch.Generator(), force="latent")


def test_fixed_policies():
    wm = tiny_world_model("car_racing")
    rng = np.random.default_rng(0)
    act = FixedPolicy("random", max_hold=3).actor(wm.game, 5, rng)
    a = np.stack([act(np.arange(5)) for _ in range(30)])  # (T, 5, 3)
    assert a.shape == (30, 5, 3) and (a[..., 1:] >= 0).all() and (np.abs(a) <= 1).all()
    runs = (np.diff(a[:, 0, 0]) != 0).sum()
    assert 10 <= runs <= 29  # held 1-3 steps at a time
    const = FixedPolicy("constant", (0.0, 1.0, 0.0)).actor(wm.game, 5, rng)
    assert const(np.array([1, 3])).tolist() == [[0.0, 1.0, 0.0]] * 2
    with pytest.raises(ValueError, match="action"):
        FixedPolicy("constant", (2.0,)).actor(tiny_world_model("doom_take_cover").game, 1, rng)
    ret, how = cross_dream_returns(wm, FixedPolicy("constant", (0.0, 1.0, 0.0)), 8, 1.0,
                                   torch.Generator().manual_seed(0))  # fmt: skip
    assert how is None and ret.shape == (8,)


# ---------------------------------------------------------------- the panel and its cache


def make_panel(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A Doom panel of four: two fixed policies and two controllers of two world models
    (different Vs). Returns (panel folder, world model A, world model B)."""
    wms = {}
    for name, seed in (("wm_a", 0), ("wm_b", 1)):
        wms[name] = tiny_world_model("doom_take_cover", seed=seed).save(tmp_path / name)
    panel = tmp_path / "panel" / "doom_take_cover"
    for name, wm_name, seed in (("c_a", "wm_a", 3), ("c_b", "wm_b", 4)):
        wm = tiny_world_model("doom_take_cover")
        params = controller(wm, seed).params.numpy()
        src = save_controller(tmp_path / f"src_{name}", params, "doom_take_cover")
        add_controller(panel, name, src, wms[wm_name], tmp_path, made_by="a test")
    entries = [
        {"name": "left", "policy": "constant", "action": [-1.0]},
        {"name": "random", "policy": "random", "max_hold": 10},
        {"name": "c_a"},
        {"name": "c_b", "note": "sees wm_a's dreams through pixels"},
    ]
    text = json.dumps({"game": "doom_take_cover", "entries": entries})
    (panel / "panel.json").write_text(text)
    return panel, wms["wm_a"], wms["wm_b"]


def no_real_game(*args, **kwargs):
    raise AssertionError("a real episode was played")


def test_real_scores_cache_is_hit(tmp_path, monkeypatch):
    panel, _, _ = make_panel(tmp_path)
    spec, entries = load_panel(panel, tmp_path)
    assert [e.name for e in entries] == ["left", "random", "c_a", "c_b"]
    assert entries[2].world_model == tmp_path / "wm_a"
    cache = RealScores(panel / "real_scores.json")
    for i, e in enumerate(entries):
        cache.put(cache_key(content_hash(e), 0, 3, 2100), e.name, np.array([1.0, 2.0, i]))
    monkeypatch.setattr(panel_mod, "play_fixed", no_real_game)
    monkeypatch.setattr("dreamgym.rollouts.RealEvaluator", no_real_game)
    reread = RealScores(panel / "real_scores.json")
    for i, e in enumerate(entries):
        returns, cached = real_returns(e, spec, reread, 3, seed=0)
        assert cached and returns.tolist() == [1.0, 2.0, i]
    # another number of episodes, or other weights: a miss
    assert real_returns(entries[2], spec, reread, 4, play=False) == (None, False)
    params = controller(tiny_world_model("doom_take_cover"), 9).params.numpy()
    save_controller(tmp_path / "src_c_a2", params, "doom_take_cover")
    add_controller(panel, "c_a", tmp_path / "src_c_a2", tmp_path / "wm_a", tmp_path)
    assert real_returns(load_panel(panel, tmp_path)[1][2], spec, reread, 3, play=False)[0] is None


def test_panel_checks_its_world_models(tmp_path):
    panel, wm_a, _ = make_panel(tmp_path)
    tiny_world_model("doom_take_cover", seed=7).save(wm_a)  # another V where c_a's was
    _, entries = load_panel(panel, tmp_path)
    with pytest.raises(ValueError, match="another V"):
        entries[2].own_world_model()
    info = json.loads((panel / "c_b" / "controller.json").read_text())
    del info["world_model"]
    (panel / "c_b" / "controller.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="records no world model"):
        load_panel(panel, tmp_path)


@pytest.mark.slow
def test_benchmark_end_to_end_and_rerun_from_cache(tmp_path, monkeypatch, capsys):
    """The script on a tiny panel: real Doom episodes the first time, none the second."""
    monkeypatch.chdir(tmp_path)  # ViZDoom writes _vizdoom/ here
    panel, wm_a, _ = make_panel(tmp_path)
    spec = importlib.util.spec_from_file_location("dream_honesty", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--world-model", str(wm_a), "--panel", str(panel), "--root", str(tmp_path),
            "--dreams", "6", "--episodes", "1", "--workers", "1", "--out", "out.json"]  # fmt: skip
    first = script.main(argv)
    out = capsys.readouterr().out
    assert [r["name"] for r in first["rows"]] == ["left", "random", "c_a", "c_b"]
    assert [r["sight"] for r in first["rows"]] == [None, None, "latent", "pixels"]
    assert not any(r["cached"] for r in first["rows"])
    assert all(len(r["dream"]) == 6 and len(r["real"]) == 1 for r in first["rows"])
    assert "Spearman rho" in out and "c_b" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["left", "random", "c_a", "c_b"]
    monkeypatch.setattr(panel_mod, "play_fixed", no_real_game)
    monkeypatch.setattr("dreamgym.rollouts.RealEvaluator", no_real_game)
    second = script.main(argv)
    assert all(r["cached"] for r in second["rows"])
    for a, b in zip(first["rows"], second["rows"], strict=True):
        np.testing.assert_array_equal(a["real"], b["real"])
        np.testing.assert_array_equal(a["dream"], b["dream"])  # same seed, same dreams
    assert second["rho"] == first["rho"] or np.isnan(first["rho"])


def test_import_report_fills_the_cache(tmp_path):
    panel, _, _ = make_panel(tmp_path)
    spec, entries = load_panel(panel, tmp_path)
    report = {"mode": "real", "game": "doom_take_cover", "seeds": [0, 1, 2],
              "returns": [10.0, 20.0, 30.0], "max_steps": 2100}  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(report))
    cache = RealScores(panel / "real_scores.json")
    import_report(entries[2], spec, cache, tmp_path / "r.json")
    returns, cached = real_returns(entries[2], spec, cache, 3, play=False)
    assert cached and returns.tolist() == [10.0, 20.0, 30.0]
    report["seeds"] = [0, 2, 3]
    (tmp_path / "r.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="consecutive"):
        import_report(entries[2], spec, cache, tmp_path / "r.json")
