"""The three nets against known answers: the paper's sizes, the MDN likelihood, tau, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import distributions as D
from torch.nn import functional as F

from dreamgym import GAMES, MDNRNN, Controller, ConvVAE
from dreamgym.controller import ControllerConfig, batched_forward
from dreamgym.games import doom_executed_action
from dreamgym.mdnrnn import LSTMState, Mixture, done_loss, mdn_nll, mixture_log_prob, sample
from dreamgym.vae import frames_to_tensor, reparameterize, tensor_to_frames, vae_loss

torch.set_num_threads(1)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def random_mixture(shape: tuple[int, ...], k: int, seed: int = 0) -> Mixture:
    g = torch.Generator().manual_seed(seed)
    return Mixture(
        logit_pi=torch.randn(*shape, k, generator=g) * 2,
        mu=torch.randn(*shape, k, generator=g) * 3,
        log_sigma=torch.randn(*shape, k, generator=g) * 0.5,
    )


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize("z_dim, expected", [(64, 4_446_915), (32, 4_348_547)])
def test_vae_param_count_matches_paper(z_dim, expected):
    assert n_params(ConvVAE(z_dim=z_dim)) == expected


def test_mdnrnn_doom_param_count_matches_paper():
    m = MDNRNN(z_dim=64, action_dim=1, hidden=512, n_mix=5, reward_head=False)
    assert n_params(m) == 1_678_785


def test_mdnrnn_reward_head_adds_one_output():
    base = MDNRNN(z_dim=8, action_dim=3, hidden=16)
    with_reward = MDNRNN(z_dim=8, action_dim=3, hidden=16, reward_head=True)
    assert n_params(with_reward) - n_params(base) == 16 + 1


@pytest.mark.parametrize(
    "game, in_dim, out_dim, bias, expected",
    [("doom_take_cover", 64 + 512 + 512, 1, False, 1088), ("car_racing", 32 + 256, 3, True, 867)],
)
def test_controller_param_count_matches_paper(game, in_dim, out_dim, bias, expected):
    spec = GAMES[game]
    assert spec.obs_dim == in_dim
    assert spec.controller_outputs[0] == out_dim  # the paper's
    assert spec.controller_bias is bias
    c = Controller(in_dim=spec.obs_dim, out_dim=out_dim, bias=bias)
    assert c.num_params == n_params(c) == expected


def test_game_spec_obs_dim():
    assert GAMES["doom_take_cover"].obs_dim == 64 + 2 * 512  # [z, c, h]
    assert GAMES["car_racing"].obs_dim == 32 + 256  # [z, h]
    assert GAMES["doom_take_cover"].action_dim == 1
    assert GAMES["car_racing"].action_dim == 3


# ---------------------------------------------------------------- V


def test_vae_shapes_and_range():
    vae = ConvVAE(z_dim=16)
    x = torch.rand(2, 3, 64, 64)
    x_hat, mu, logvar = vae(x, generator=torch.Generator().manual_seed(0))
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == (2, 16)
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    with pytest.raises(AssertionError, match="64, 64"):
        vae.encode(torch.rand(2, 3, 32, 32))


def test_reparameterize_uses_sigma():
    mu, logvar = torch.full((20000, 1), 2.0), torch.full((20000, 1), math.log(9.0))
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(2.0, abs=0.1)
    assert z.std().item() == pytest.approx(3.0, rel=0.03)


def test_frames_tensor_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 64, 64, 3), dtype=np.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (2, 5, 3, 64, 64) and x.dtype == torch.float32
    np.testing.assert_array_equal(tensor_to_frames(x), frames)


def test_vae_loss_kl_floor():
    Z = 4  # floor = 0.5 * Z = 2 nats
    x = torch.zeros(1, 3, 64, 64)
    x_hat = torch.full_like(x, 0.5)
    rec = 3 * 64 * 64 * 0.25
    # KL of N(mu, 1) against N(0, 1) is mu^2 / 2 per dimension.
    below = torch.full((1, Z), 0.5, requires_grad=True)  # KL = 4 * 0.125 = 0.5 < 2
    loss, r, kl = vae_loss(x, x_hat, below, torch.zeros(1, Z))
    assert r.item() == pytest.approx(rec)
    assert kl.item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(rec + 2.0)  # floored
    loss.backward()
    assert torch.all(below.grad == 0)  # no pressure on the latent below the floor

    above = torch.full((1, Z), 2.0, requires_grad=True)  # KL = 4 * 2 = 8 > 2
    loss, _, kl = vae_loss(x, x_hat, above, torch.zeros(1, Z))
    assert kl.item() == pytest.approx(8.0)
    assert loss.item() == pytest.approx(rec + 8.0)  # not floored
    loss.backward()
    assert torch.allclose(above.grad, torch.full((1, Z), 2.0))


def test_vae_loss_kl_against_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(3, 8, generator=g) * 3, torch.randn(3, 8, generator=g)
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    expected = D.kl_divergence(q, D.Normal(0.0, 1.0)).sum(1).mean()
    x = torch.rand(3, 3, 64, 64, generator=g)
    _, _, kl = vae_loss(x, x, mu, logvar, kl_tolerance=0.0)
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- M: likelihood


def test_mdn_nll_equals_mixture_same_family():
    mix = random_mixture((4, 7, 6), k=5)  # (B, T, Z, K)
    target = torch.randn(4, 7, 6) * 3
    dist = D.MixtureSameFamily(
        D.Categorical(logits=mix.logit_pi), D.Normal(mix.mu, mix.log_sigma.exp())
    )
    expected = -dist.log_prob(target)  # (B, T, Z): one mixture per dimension
    torch.testing.assert_close(-mixture_log_prob(mix, target), expected)
    torch.testing.assert_close(mdn_nll(mix, target), expected.mean())


def test_mdn_nll_mask_averages_valid_steps_only():
    mix = random_mixture((3, 5, 4), k=5, seed=2)
    target = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    per_dim = -mixture_log_prob(mix, target)  # (B, T, Z)
    torch.testing.assert_close(mdn_nll(mix, target, mask), per_dim[mask].mean())


def test_mdn_nll_one_component_is_gaussian_nll():
    mix = random_mixture((5, 3), k=1, seed=3)
    target = torch.randn(5, 3)
    mu, sigma = mix.mu[..., 0], mix.log_sigma[..., 0].exp()
    expected = F.gaussian_nll_loss(mu, target, sigma**2, full=True, reduction="mean")
    torch.testing.assert_close(mdn_nll(mix, target), expected)


def test_mdn_nll_is_stable_far_from_the_modes():
    mix = random_mixture((2, 3), k=5, seed=4)
    nll = mdn_nll(mix, torch.full((2, 3), 1e3))
    assert torch.isfinite(nll) and nll > 0


# ---------------------------------------------------------------- M: sampling with tau


def top_mode_mean(mix: Mixture) -> torch.Tensor:
    return mix.mu.gather(-1, mix.logit_pi.argmax(-1, keepdim=True)).squeeze(-1)


def test_sample_tau_zero_is_top_mode_mean():
    mix = random_mixture((6, 4), k=5, seed=5)
    torch.testing.assert_close(sample(mix, 0.0), top_mode_mean(mix), rtol=0, atol=0)


def test_sample_tau_to_zero_tends_to_top_mode_mean():
    mix = random_mixture((6, 4), k=5, seed=6)
    z = sample(mix, 1e-6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, top_mode_mean(mix), rtol=0, atol=0.05)


def test_sample_tau_one_draws_components_by_weight():
    n = 40000
    logits = torch.tensor([0.0, 1.0, 2.0])
    mix = Mixture(
        logits.expand(n, 1, 3), torch.tensor([-10.0, 0.0, 10.0]).expand(n, 1, 3),
        torch.full((n, 1, 3), math.log(0.01)),
    )  # fmt: skip
    z = sample(mix, 1.0, torch.Generator().manual_seed(0))[:, 0]
    freq = torch.stack(
        [(z < -5).float().mean(), (z.abs() < 5).float().mean(), (z > 5).float().mean()]
    )
    torch.testing.assert_close(freq, torch.softmax(logits, 0), rtol=0, atol=0.01)


def test_sample_spread_grows_with_tau():
    n = 40000
    mix = Mixture(
        torch.tensor([1.0, 0.0]).expand(n, 1, 2), torch.tensor([-1.0, 2.0]).expand(n, 1, 2),
        torch.full((n, 1, 2), math.log(0.5)),
    )  # fmt: skip
    stds = [
        sample(mix, tau, torch.Generator().manual_seed(0)).std().item()
        for tau in (0.1, 0.5, 1.0, 1.5)
    ]
    assert stds == sorted(stds) and stds[-1] > 1.5 * stds[0]


@pytest.mark.parametrize("tau", [0.25, 1.0, 2.0])
def test_sample_one_component_sigma_scales_with_sqrt_tau(tau):
    n = 40000
    mix = Mixture(
        torch.zeros(n, 1, 1), torch.full((n, 1, 1), 3.0), torch.full((n, 1, 1), math.log(2.0))
    )
    z = sample(mix, tau, torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(3.0, abs=0.05)
    assert z.std().item() == pytest.approx(2.0 * math.sqrt(tau), rel=0.03)


def test_sample_is_reproducible_with_a_generator():
    mix = random_mixture((3, 4), k=5, seed=7)
    a = sample(mix, 1.15, torch.Generator().manual_seed(42))
    b = sample(mix, 1.15, torch.Generator().manual_seed(42))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- M: done head, step


def test_done_loss_weights_positives():
    logits = torch.tensor([0.3, -1.2, 2.0, -0.5])
    done = torch.tensor([1.0, 0.0, 1.0, 0.0])
    pw = 10.0
    s = torch.sigmoid(logits)
    by_hand = -(pw * done * torch.log(s) + (1 - done) * torch.log(1 - s)).mean()
    torch.testing.assert_close(done_loss(logits, done, pos_weight=pw), by_hand)
    # At logit 0 a positive costs exactly pos_weight times a negative.
    pos = done_loss(torch.zeros(1), torch.ones(1), pos_weight=pw)
    neg = done_loss(torch.zeros(1), torch.zeros(1), pos_weight=pw)
    assert pos.item() == pytest.approx(pw * neg.item()) and neg.item() == pytest.approx(math.log(2))


def test_done_loss_mask():
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.0, 1.0, -3.0]])
    done = torch.tensor([[0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    full = F.binary_cross_entropy_with_logits(
        logits, done.float(), pos_weight=torch.tensor(10.0), reduction="none"
    )
    torch.testing.assert_close(done_loss(logits, done, mask=mask), full[mask].mean())


@pytest.mark.parametrize("reward_head", [False, True])
def test_step_equals_sequence_forward(reward_head):
    torch.manual_seed(0)
    m = MDNRNN(z_dim=6, action_dim=2, hidden=12, n_mix=3, reward_head=reward_head)
    B, T = 3, 5
    z, a = torch.randn(B, T, 6), torch.randn(B, T, 2)
    h0 = LSTMState(torch.randn(B, 12), torch.randn(B, 12))
    with torch.no_grad():
        seq, final = m(z, a, h0)
        state = h0
        for t in range(T):
            state, out = m.step(state, z[:, t], a[:, t])
            for got, want in zip(out.mixture, seq.mixture, strict=True):
                torch.testing.assert_close(got, want[:, t])
            torch.testing.assert_close(out.done_logit, seq.done_logit[:, t])
            if reward_head:
                torch.testing.assert_close(out.reward, seq.reward[:, t])
            else:
                assert out.reward is None and seq.reward is None
    torch.testing.assert_close(state.h, final.h)
    torch.testing.assert_close(state.c, final.c)
    assert seq.mixture.mu.shape == (B, T, 6, 3)


def test_forward_from_no_state_equals_zero_state():
    torch.manual_seed(1)
    m = MDNRNN(z_dim=4, action_dim=1, hidden=8)
    z, a = torch.randn(2, 3, 4), torch.randn(2, 3, 1)
    with torch.no_grad():
        (o1, s1), (o2, s2) = m(z, a), m(z, a, m.initial_state(2))
    torch.testing.assert_close(o1.mixture.mu, o2.mixture.mu)
    torch.testing.assert_close(s1.h, s2.h)


# ---------------------------------------------------------------- C


def test_controller_flat_round_trip_and_layout():
    c = Controller(in_dim=5, out_dim=3, bias=True)
    flat = torch.arange(c.num_params, dtype=torch.float32)
    c.set_flat(flat)
    torch.testing.assert_close(c.get_flat(), flat)
    torch.testing.assert_close(c.weight, flat[:15].view(3, 5))  # W row-major, then b
    torch.testing.assert_close(c.bias, flat[15:])
    c.set_flat(np.ones(c.num_params))  # numpy from CMA-ES is fine
    assert torch.all(c.get_flat() == 1)


def test_controller_starts_at_zero():
    c = Controller(in_dim=1088, out_dim=1, bias=False)
    assert torch.all(c.get_flat() == 0)
    assert torch.all(c(torch.randn(4, 1088)) == 0)


@pytest.mark.parametrize("size", [0, 7, 17])
def test_controller_set_flat_wrong_size(size):
    c = Controller(in_dim=4, out_dim=2, bias=False)  # 8 params
    before = c.get_flat().clone()
    with pytest.raises(ValueError, match="params: expected a vector of 8"):
        c.set_flat(torch.zeros(size))
    torch.testing.assert_close(c.get_flat(), before)


def test_hidden_layer_controller_layout_and_forward():
    c = Controller(in_dim=5, out_dim=3, bias=True, hidden=4)
    assert list(c.config.shapes()) == ["hidden_weight", "hidden_bias", "weight", "bias"]
    assert c.num_params == 4 * 5 + 4 + 3 * 4 + 3
    flat = torch.randn(c.num_params, generator=torch.Generator().manual_seed(0))
    c.set_flat(flat)
    torch.testing.assert_close(c.get_flat(), flat)
    torch.testing.assert_close(c.hidden_weight, flat[:20].view(4, 5))  # layer by layer
    torch.testing.assert_close(c.bias, flat[-3:])
    x = torch.randn(2, 5)
    h = torch.tanh(x @ flat[:20].view(4, 5).T + flat[20:24])
    with torch.no_grad():
        torch.testing.assert_close(c(x), torch.tanh(h @ flat[24:36].view(3, 4).T + flat[36:]))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("hidden", [0, 5])
def test_batched_forward_equals_separate_forwards(bias, hidden):
    cfg = ControllerConfig(in_dim=9, out_dim=3, bias=bias, hidden=hidden)
    g = torch.Generator().manual_seed(0)
    P, N = 4, 6
    params = torch.randn(P, cfg.num_params, generator=g)
    obs = torch.randn(P, N, 9, generator=g)
    got = batched_forward(cfg, params, obs)
    c = Controller(cfg)
    for p in range(P):
        c.set_flat(params[p])
        with torch.no_grad():
            torch.testing.assert_close(got[p], c(obs[p]))
    assert got.shape == (P, N, 3) and got.abs().max() <= 1


def test_batched_forward_rejects_bad_shapes():
    cfg = ControllerConfig(in_dim=4, out_dim=1, bias=False)
    with pytest.raises(AssertionError, match="params"):
        batched_forward(cfg, torch.zeros(2, 5), torch.zeros(2, 3, 4))
    with pytest.raises(AssertionError, match="obs"):
        batched_forward(cfg, torch.zeros(2, 4), torch.zeros(3, 3, 4))


# ---------------------------------------------------------------- actions


def test_doom_executed_action_mapping():
    a = np.array([-1.0, -0.5, -0.34, -1 / 3, 0.0, 1 / 3, 0.34, 0.5, 1.0], np.float32)
    expected = np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1], np.float32)
    np.testing.assert_array_equal(doom_executed_action(a), expected)
    torch.testing.assert_close(
        doom_executed_action(torch.from_numpy(a)), torch.from_numpy(expected)
    )


def test_doom_real_env_executes_the_mapped_action():
    """The real game presses the button M is told about, at the -1/3 and 1/3 edges too."""
    from dreamgym.games import DoomTakeCoverEnv

    class FakeGame:
        def __init__(self):
            self.pressed = []

        def make_action(self, buttons, tics):
            self.pressed.append(buttons)
            return 1.0

        def is_episode_finished(self):
            return False

        def get_state(self):
            return None

        def close(self):
            pass

    env = object.__new__(DoomTakeCoverEnv)  # no ViZDoom process: only step's mapping
    env._game, env._t, env.max_episode_steps = FakeGame(), 0, 10**6
    env._frame, env._raw = np.zeros((64, 64, 3), np.uint8), None
    actions = np.array([-1.0, -0.5, -1 / 3, 0.0, 1 / 3, 0.5, 1.0], np.float32)
    for a in actions:
        env.step(np.array([a], np.float32))
    executed = doom_executed_action(actions)
    pressed = np.array(env._game.pressed)  # MOVE_LEFT, MOVE_RIGHT
    np.testing.assert_array_equal(pressed[:, 1] - pressed[:, 0], executed)


def test_car_racing_controller_to_action():
    spec = GAMES["car_racing"]
    y = torch.tensor([[-0.5, -1.0, -0.3], [0.7, 1.0, 0.6], [0.0, 0.0, 1.0]])
    a = spec.controller_to_action(y)
    expected = torch.tensor([[-0.5, 0.0, 0.0], [0.7, 1.0, 0.6], [0.0, 0.5, 1.0]])
    torch.testing.assert_close(a, expected)
    assert spec.action_space.contains(a[0].numpy())
