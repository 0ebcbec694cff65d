"""Dreams from real states: the bank of M's teacher-forced states, and evolve with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_world_model

from dreamgym.policy import controller_config
from dreamgym.train import evolve
from dreamgym.train.common import open_run
from dreamgym.train.encode import LATENTS
from dreamgym.train.evaluate import DreamEvaluator, dream_rollouts
from dreamgym.train.starts import RealStarts

torch.set_num_threads(1)

LENGTHS = (7, 12, 3)


def fake_latents(lengths=LENGTHS, z_dim: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Encoded CarRacing episodes of these lengths, as encode writes them."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    return {
        "mu": rng.normal(size=(n, z_dim)).astype(np.float32),
        "logvar": np.full((n, z_dim), -3.0, np.float32),
        "actions": rng.uniform([-1, 0, 0], [1, 1, 1], (n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminated": np.zeros(n, bool),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    }


def test_the_bank_holds_m_state_after_reading_the_real_episode_up_to_each_start():
    wm = tiny_world_model("car_racing")
    lat = fake_latents()
    bank = RealStarts.from_latents(wm, lat, every=5)
    # starts at frames 0, 5, 10 of each episode long enough: 2 + 3 + 1
    assert len(bank) == 6
    offsets = lat["offsets"]
    found = 0
    for ep, length in enumerate(LENGTHS):
        s = offsets[ep]
        for t in range(0, length, 5):
            z = torch.as_tensor(lat["mu"][s : s + t])[None]  # (1, t, Z)
            a = torch.as_tensor(lat["actions"][s : s + t])[None]
            if t == 0:
                h = c = torch.zeros(16)
            else:
                _, state = wm.mdnrnn(z, a)
                h, c = state.h[0], state.c[0]
            match = [
                r for r in range(len(bank))
                if np.array_equal(bank.mu[r].numpy(), lat["mu"][s + t])
            ]  # fmt: skip
            assert len(match) == 1
            r = match[0]
            torch.testing.assert_close(bank.lstm.h[r], h, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(bank.lstm.c[r], c, atol=1e-5, rtol=1e-5)
            found += 1
    assert found == len(bank)
    with pytest.raises(ValueError, match="every"):
        RealStarts.from_latents(wm, lat, every=0)
    with pytest.raises(ValueError, match="dimensions"):
        RealStarts.from_latents(wm, fake_latents(z_dim=8), every=5)


def test_dreams_from_real_starts_begin_in_the_bank_and_are_reproducible():
    wm = tiny_world_model("car_racing", done_bias=-50.0)  # dreams that never end
    bank = RealStarts.from_latents(wm, fake_latents(), every=5)
    g = torch.Generator().manual_seed(3)
    state = bank.sample(64, g)
    rows = [int(torch.argmin((bank.mu - state.z[i]).square().sum(1))) for i in range(64)]
    assert len(set(rows)) == len(bank)  # every row drawn, each one exactly
    torch.testing.assert_close(state.lstm.h, bank.lstm.h[rows])
    noise = (state.z - bank.mu[rows]).std().item()  # z from V's posterior, sd exp(-3 / 2)
    assert abs(noise - np.exp(-1.5)) < 0.1 * np.exp(-1.5)
    params = np.random.default_rng(0).normal(0, 0.3, (4, controller_config(wm).num_params))
    ev = DreamEvaluator(wm, 1.0, max_steps=6, starts=bank)
    r = ev.returns(params, 5, seed=1)
    np.testing.assert_array_equal(r, ev.returns(params, 5, seed=1))
    assert ev.steps == 2 * 4 * 5 * 6  # every dream lasted max_steps
    first = DreamEvaluator(wm, 1.0, max_steps=6).returns(params, 5, seed=1)
    assert not np.array_equal(r, first)
    with pytest.raises(ValueError, match="starts"):
        dream_rollouts(wm, params, 2, 1.0, g, 6, world=wm, starts=bank)


def test_evolve_from_real_starts_uses_the_runs_encoded_episodes(tmp_path):
    run_dir, _ = open_run(tmp_path / "run", "car_racing")
    tiny_world_model("car_racing").save(run_dir / "world_model")
    cfg = evolve.EvolveConfig(
        tau=1.0, generations=2, popsize=6, trials=3, max_steps=8, eval_every=1,
        eval_rollouts=8, seed=1, threads=1, inputs="z", real_starts=4,
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="encode"):
        evolve.run(cfg, run_dir)
    np.savez(run_dir / LATENTS, **fake_latents())
    out = evolve.run(cfg, run_dir)
    assert out.name == "evolve_tau1_z_starts8"
    info = json.loads((out / "controller.json").read_text())
    assert info["real_starts"] == 4 and info["max_steps"] == 8
    assert [e["generation"] for e in info["evals"]] == [1, 2]
    with pytest.raises(ValueError, match="real_starts"):
        evolve.run(evolve.EvolveConfig(real_starts=-1), run_dir)
    with pytest.raises(ValueError, match="real_starts"):
        evolve.run(evolve.EvolveConfig(real_starts=4, real=True), run_dir)
