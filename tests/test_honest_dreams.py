"""Dropout in M and ensembles of Ms: properties of the world model, so of every dream."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_world_model

import dreamgym  # noqa: F401  (registers the envs)
from dreamgym import dream_core as dc
from dreamgym.mdnrnn import MDNRNN, dropout_mask
from dreamgym.rollouts import DreamEvaluator, dream_rollouts
from dreamgym.world_model import WorldModel, WorldModelError


def ensemble(game: str = "doom_take_cover", members: int = 3, dropout: float = 0.0) -> WorldModel:
    """A tiny world model with ``members`` Ms; the last member's dreams end at once,
    the others' never."""
    wm = tiny_world_model(game, seed=0)
    cfg = wm.mdnrnn.config
    done = 3 * cfg.n_mix * cfg.z_dim
    ms = []
    for k in range(members):
        torch.manual_seed(100 + k)
        m = MDNRNN(type(cfg)(**{**cfg.to_dict(), "dropout": dropout}))
        with torch.no_grad():
            m.head.weight[done] = 0.0
            m.head.bias[done] = 10.0 if k == members - 1 and k else -10.0
        ms.append(m)
    return WorldModel(wm.game, wm.vae, ms[0], wm.z0_mu, wm.z0_logvar, ensemble=ms[1:])


def rollout(env, seed: int, steps: int = 6) -> np.ndarray:
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(steps):
        obs, *_ = env.step(np.array([0.5], np.float32))
        out.append(obs)
    return np.stack(out)


def test_dropout_mask_rate_and_scale():
    g = torch.Generator().manual_seed(0)
    m = dropout_mask(400, 100, 0.2, g)
    assert set(np.unique(m.numpy()).round(4)) == {0.0, 1.25}
    assert abs((m == 0).float().mean().item() - 0.2) < 0.02
    assert dropout_mask(4, 8, 0.0, g) is None


def test_dropout_mask_fixed_by_seed_and_differs_across_seeds():
    wm = tiny_world_model("doom_take_cover")
    env = gym.make("DreamDoom-v0", world_model=wm, dropout=0.3)
    env.reset(seed=5)
    a = env.unwrapped._dreams.state.mask.clone()
    env.reset(seed=5)
    assert torch.equal(a, env.unwrapped._dreams.state.mask)
    env.reset(seed=6)
    assert not torch.equal(a, env.unwrapped._dreams.state.mask)
    # the mask changes the dream: same seed, same first frame, other predictions
    plain = gym.make("DreamDoom-v0", world_model=wm, dropout=0.0)
    assert plain.unwrapped._dreams.dropout == 0.0
    assert not np.allclose(rollout(env, 5)[1:], rollout(plain, 5)[1:])
    np.testing.assert_array_equal(rollout(env, 5), rollout(env, 5))


def test_dropout_rate_recorded_in_the_world_model(tmp_path):
    wm = ensemble(members=1, dropout=0.1)
    assert wm.dropout == 0.1
    wm.save(tmp_path / "wm")
    back = WorldModel.load(tmp_path / "wm")
    assert back.dropout == 0.1
    env = gym.make("DreamDoom-v0", world_model=back)
    env.reset(seed=0)
    assert env.unwrapped._dreams.state.mask is not None  # the trained rate, by default
    env = gym.make("DreamDoom-v0", world_model=back, dropout=0)
    env.reset(seed=0)
    assert env.unwrapped._dreams.state.mask is None


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.1", True])
def test_bad_dropout_is_refused(bad):
    with pytest.raises(ValueError, match="dropout"):
        gym.make("DreamDoom-v0", world_model=tiny_world_model("doom_take_cover"), dropout=bad)


def test_single_m_dreams_as_before():
    """No dropout, one M: the state carries no mask or member and draws nothing more."""
    wm = tiny_world_model("doom_take_cover")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s = dc.initial_state(wm, 5, g1)
    assert s.mask is None and s.member is None and s.reader is None
    idx = torch.randint(0, wm.z0_mu.shape[0], (5,), generator=g2)
    z = dc.posterior_sample(wm.z0_mu[idx], wm.z0_logvar[idx], g2)
    assert torch.equal(s.z, z)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_member_fixed_by_seed_and_differs_across_seeds():
    wm = ensemble(members=3)
    venv = gym.make_vec("DreamDoom-v0", num_envs=64, world_model=wm)
    venv.reset(seed=1)
    a = venv.unwrapped._dreams.state.member.clone()
    assert set(a.tolist()) == {0, 1, 2}
    venv.reset(seed=1)
    assert torch.equal(a, venv.unwrapped._dreams.state.member)
    venv.reset(seed=2)
    assert not torch.equal(a, venv.unwrapped._dreams.state.member)
    fixed = gym.make_vec("DreamDoom-v0", num_envs=8, world_model=wm, members=2)
    fixed.reset(seed=1)
    assert fixed.unwrapped._dreams.state.member.tolist() == [2] * 8


def test_each_dream_is_played_by_its_member_and_read_through_member_0():
    """A dream of member k equals the dream of a world model whose only M is member k,
    except that the controller reads member 0's state."""
    wm = ensemble(members=3)
    for k in range(3):
        solo = WorldModel(wm.game, wm.vae, wm.members[k], wm.z0_mu, wm.z0_logvar)
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        s = dc.initial_state(wm, 4, g1, members=k)
        t = dc.initial_state(solo, 4, g2)
        a = torch.full((4, 1), 0.9)
        for _ in range(5):
            s, r1, d1 = dc.step(wm, s, a, 1.0, g1)
            t, r2, d2 = dc.step(solo, t, a, 1.0, g2)
            torch.testing.assert_close(s.z, t.z)
            torch.testing.assert_close(s.lstm.h, t.lstm.h)
            assert torch.equal(d1, d2)
        reader = dc.observation(wm, s)[:, -16:]  # h of member 0
        if k == 0:
            torch.testing.assert_close(reader, s.lstm.h)
        else:
            assert not torch.allclose(reader, s.lstm.h)


def test_ensemble_saves_and_loads_round_trip(tmp_path):
    wm = ensemble(members=3, dropout=0.1)
    wm.save(tmp_path / "wm")
    back = WorldModel.load(tmp_path / "wm")
    assert len(back.members) == 3 and back.dropout == 0.1
    for m, n in zip(wm.members, back.members, strict=True):
        for (k, v), (k2, v2) in zip(m.state_dict().items(), n.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(v, v2)
    a = rollout(gym.make("DreamDoom-v0", world_model=wm), 4)
    b = rollout(gym.make("DreamDoom-v0", world_model=back), 4)
    np.testing.assert_array_equal(a, b)


def test_single_m_folder_loads_as_before(tmp_path):
    wm = tiny_world_model("doom_take_cover")
    wm.save(tmp_path / "wm")
    cfg = (tmp_path / "wm" / "config.json").read_text()
    # folders written before ensembles had no "members" key and no dropout
    import json

    old = json.loads(cfg)
    del old["members"]
    del old["mdnrnn"]["dropout"]
    (tmp_path / "wm" / "config.json").write_text(json.dumps(old))
    back = WorldModel.load(tmp_path / "wm")
    assert len(back.members) == 1 and back.dropout == 0.0
    a = rollout(gym.make("DreamDoom-v0", world_model=wm), 3)
    b = rollout(gym.make("DreamDoom-v0", world_model=back), 3)
    np.testing.assert_array_equal(a, b)


def test_ensemble_folder_missing_a_member_names_the_key(tmp_path):
    import json

    wm = ensemble(members=2)
    wm.save(tmp_path / "wm")
    cfg = json.loads((tmp_path / "wm" / "config.json").read_text())
    cfg["members"] = 3
    (tmp_path / "wm" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WorldModelError, match="members.2."):
        WorldModel.load(tmp_path / "wm")


def test_bad_members_is_refused():
    wm = ensemble(members=2)
    for bad in (2, -1, "min", 1.0):
        with pytest.raises(ValueError, match="members"):
            gym.make("DreamDoom-v0", world_model=wm, members=bad)


def test_min_scoring_picks_the_worst_member():
    """Member 2 ends its dreams at once: "min" fitness is its mean."""
    wm = ensemble(members=3)
    params = torch.zeros(2, 64 + 2 * 16).numpy()
    ev = DreamEvaluator(wm, 1.0, max_steps=50, members="min")
    ret = ev.returns(params, trials=32, seed=0)
    means = ev.model_means(ret)
    assert means.shape == (2, 3)
    np.testing.assert_array_equal(means, [[50, 50, 1], [50, 50, 1]])
    np.testing.assert_array_equal(ev.fitness(ret), means.min(axis=1))
    for k in range(3):
        g = torch.Generator().manual_seed(0)
        alone, _ = dream_rollouts(wm, params, 32, 1.0, g, 50, members=k)
        np.testing.assert_allclose(alone.mean(axis=1).numpy(), means[:, k])


def _dropout_pair(rate: float) -> tuple[WorldModel, WorldModel]:
    """The same tiny world model, its M recorded as trained with dropout ``rate`` and
    with none; its done head reads M's output, so a dropout mask changes when dreams end."""
    wm = tiny_world_model("doom_take_cover", seed=0, done_bias=0.0)
    cfg = wm.mdnrnn.config
    done = 3 * cfg.n_mix * cfg.z_dim
    with torch.no_grad():
        wm.mdnrnn.head.weight[done] = torch.randn(cfg.hidden) * 3.0
    out = []
    for p in (rate, 0.0):
        m = MDNRNN(type(cfg)(**{**cfg.to_dict(), "dropout": p}))
        m.load_state_dict(wm.mdnrnn.state_dict())
        out.append(WorldModel(wm.game, wm.vae, m, wm.z0_mu, wm.z0_logvar))
    return out[0], out[1]


def test_a_dream_evaluator_overrides_the_dropout_rate():
    """dropout=0 dreams the trained-with-dropout M exactly as an M recorded without it."""
    trained, plain = _dropout_pair(0.5)
    params = torch.randn(2, 64 + 2 * 16).numpy() * 0.1
    plain_ret = DreamEvaluator(plain, 1.0, max_steps=60).returns(params, 32, seed=1)
    off = DreamEvaluator(trained, 1.0, max_steps=60, dropout=0.0).returns(params, 32, seed=1)
    on = DreamEvaluator(trained, 1.0, max_steps=60).returns(params, 32, seed=1)
    np.testing.assert_array_equal(off, plain_ret)
    assert not np.array_equal(on, plain_ret)
    with pytest.raises(ValueError, match="dropout"):
        DreamEvaluator(trained, 1.0, dropout=1.0)


def test_cross_dream_scoring_overrides_the_dropout_rate():
    """The honesty benchmark's dreams take the same override as the evaluators."""
    from dreamgym.train.cross_dream import FixedPolicy, cross_dream_returns

    trained, plain = _dropout_pair(0.5)
    still = FixedPolicy("constant", (0.0,))

    def returns(wm, dropout=None):
        g = torch.Generator().manual_seed(2)
        return cross_dream_returns(wm, still, 32, 1.0, g, max_steps=60, dropout=dropout)[0]

    np.testing.assert_array_equal(returns(trained, dropout=0.0), returns(plain))
    assert not np.array_equal(returns(trained), returns(plain))


# ---------------------------------------------------------------- hazard


def constant_done(logit: float, game: str = "doom_take_cover") -> WorldModel:
    """A tiny world model whose done head says ``logit`` in every state."""
    wm = tiny_world_model(game)
    cfg = wm.mdnrnn.config
    done = 3 * cfg.n_mix * cfg.z_dim
    with torch.no_grad():
        wm.mdnrnn.head.weight[done] = 0.0
        wm.mdnrnn.head.bias[done] = logit
    return wm


def first_lengths(wm: WorldModel, hazard: float, n: int = 2000, steps: int = 400) -> np.ndarray:
    """How many steps each of n dreams lasts (``steps`` if it never ends)."""
    env = gym.make_vec("DreamDoom-v0", num_envs=n, world_model=wm, hazard=hazard)
    env.reset(seed=0)
    length, alive = np.zeros(n), np.ones(n, bool)
    for _ in range(steps):
        _, _, terminated, _, _ = env.step(np.zeros((n, 1), np.float32))
        length += alive
        alive &= ~terminated
    return length


def test_hazard_ends_dreams_at_the_calibrated_rate():
    # M's sigmoid says 0.34 (< 0.5: the paper's dream never ends); with deaths weighted
    # 10x in its fit, the chance of dying is 0.05 a step, so hazard k ends a dream after
    # 1 / (0.05 k) steps on average
    wm = constant_done(math.log(10.0) + math.log(0.05 / 0.95))
    assert first_lengths(wm, 0.0).min() == 400
    for k in (1.0, 2.0):
        mean = first_lengths(wm, k).mean()
        assert abs(mean - 1 / (0.05 * k)) < 0.08 / (0.05 * k), (k, mean)


def test_hazard_zero_dreams_as_before_and_where_m_is_sure_it_still_ends():
    wm = tiny_world_model("doom_take_cover")
    plain = gym.make("DreamDoom-v0", world_model=wm)
    zero = gym.make("DreamDoom-v0", world_model=wm, hazard=0)
    for env in (plain, zero):
        env.reset(seed=3)
    for _ in range(30):
        a = np.array([0.7], np.float32)
        out, same = plain.step(a), zero.step(a)
        np.testing.assert_array_equal(out[0], same[0])
        assert out[1:4] == same[1:4]
        if out[2] or out[3]:
            plain.reset(), zero.reset()
    assert first_lengths(constant_done(10.0), 5.0, n=8, steps=3).max() == 1


@pytest.mark.parametrize(
    "bad,error", [(-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                  ("3", TypeError), (True, TypeError)],
)  # fmt: skip
def test_bad_hazard_is_refused_and_the_dream_keeps_its_own(bad, error):
    wm = tiny_world_model("doom_take_cover")
    with pytest.raises(error, match="hazard"):
        gym.make("DreamDoom-v0", world_model=wm, hazard=bad)
    with pytest.raises(error, match="hazard"):
        gym.make_vec("DreamDoom-v0", num_envs=2, world_model=wm, hazard=bad)
    env = gym.make_vec("DreamDoom-v0", num_envs=2, world_model=wm, hazard=1.5)
    with pytest.raises(error, match="hazard"):
        env.unwrapped.hazard = bad
    assert env.unwrapped.hazard == 1.5
    env.unwrapped.hazard = 2
    assert env.unwrapped.hazard == 2.0 and isinstance(env.unwrapped.hazard, float)


def test_a_hazard_too_large_for_a_float_is_refused_as_out_of_range():
    with pytest.raises(ValueError, match="hazard"):
        dc.check_hazard(10**400)
