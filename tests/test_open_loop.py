"""M's open-loop loss: M reads its own predictions, from its teacher-forced states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_sequence_sampler import latents

from dreamgym.mdnrnn import MDNRNN, MDNRNNConfig, mixture_log_prob
from dreamgym.train.fit_mdnrnn import (
    FitMDNRNNConfig,
    SequenceSampler,
    forward_with_states,
    losses,
    mixture_mean,
    open_loop_losses,
)

torch.set_num_threads(1)


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    m = MDNRNN(MDNRNNConfig(z_dim=4, action_dim=1, hidden=8, n_mix=3, reward_head=True))
    lat = latents([30, 17])
    lat["mu"] = np.random.default_rng(seed).normal(size=lat["mu"].shape).astype(np.float32)
    lat["actions"] = np.random.default_rng(seed + 1).uniform(-1, 1, (47, 1)).astype(np.float32)
    return m, SequenceSampler(lat, lambda a: a, seq_len=25, seed=seed).batch(3, "cpu")


def test_states_are_the_teacher_forced_ones():
    m, b = model_and_batch()
    with torch.no_grad():
        out, states = forward_with_states(m, b["z"], b["a"], every=7)
        full, _ = m(b["z"], b["a"])
        assert torch.allclose(out.mixture.mu, full.mixture.mu, atol=1e-6)
        assert [t for t, _ in states] == list(range(0, b["z"].shape[1], 7))
        for t, state in states[1:]:
            _, ref = m(b["z"][:, :t], b["a"][:, :t])
            assert torch.allclose(state.h, ref.h, atol=1e-6)
            assert torch.allclose(state.c, ref.c, atol=1e-6)


def test_open_loop_reads_its_own_mean_and_the_true_actions():
    m, b = model_and_batch()
    with torch.no_grad():
        _, states = forward_with_states(m, b["z"], b["a"], every=10)
        parts = open_loop_losses(m, b, states[:1], steps=3)
        # by hand, from t = 0: step 0 reads z_0, steps 1 and 2 read the previous mean
        state, out = m.step(states[0][1], b["z"][:, 0], b["a"][:, 0])
        nll, sq, n = 0.0, 0.0, 0
        for t in (1, 2):
            state, out = m.step(state, mixture_mean(out.mixture), b["a"][:, t])
            nll -= mixture_log_prob(out.mixture, b["z_next"][:, t]).sum()
            sq += (out.reward - b["reward"][:, t]).pow(2).sum()
            n += b["z"].shape[0]
    assert b["has_next"][:, :3].all()
    torch.testing.assert_close(parts["open_loop_nll"], nll / (n * 4))
    torch.testing.assert_close(parts["open_loop_reward"], sq / n)


def test_open_loop_losses_join_the_loss_and_train():
    m, b = model_and_batch()
    cfg = FitMDNRNNConfig(open_loop_steps=8, open_loop_every=10, reward_weight=2.0)
    parts = losses(m, b, cfg)
    expected = (parts["nll"] + parts["done"] + 2.0 * parts["reward"]
                + parts["open_loop_nll"] + 2.0 * parts["open_loop_reward"])  # fmt: skip
    torch.testing.assert_close(parts["loss"], expected)
    parts["loss"].backward()  # gradients flow through the fed-back means
    assert m.lstm.weight_ih_l0.grad.abs().sum() > 0
    one_step = losses(m, b, FitMDNRNNConfig())
    assert "open_loop_nll" not in one_step
    torch.testing.assert_close(one_step["nll"], parts["nll"])


def test_bad_open_loop_settings_fail_clearly(tmp_path):
    from dreamgym.train import fit_mdnrnn

    for bad in ({"open_loop_steps": -1}, {"open_loop_steps": 1}, {"open_loop_every": 0}):
        with pytest.raises(ValueError, match="open_loop"):
            fit_mdnrnn.run(FitMDNRNNConfig(**{"open_loop_steps": 5, **bad}), tmp_path)
