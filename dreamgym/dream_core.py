"""The dream's math: batched reset and step of M, shared by the envs and by CMA-ES.

Pure tensor functions over a ``WorldModel``; no Python loop over dreams.
Semantics (Ha & Schmidhuber 2018):
- reset: z0 = mu + sigma * eps of a random real first frame from the bank; h0 = c0 = 0;
- step(a): M consumes (z_t, executed a_t); z_{t+1} is sampled at temperature tau
  (logits / tau, sigma * sqrt(tau)); done when sigmoid(done_logit) > 0.5 (tau not
  applied); reward is the game's constant, or M's reward head.
- observation: [z, c, h] (Doom) or [z, h] (CarRacing), z clamped to +-Z_BOUND.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from dreamgym.mdnrnn import LSTMState, sample

if TYPE_CHECKING:  # world_model imports the start bank, which builds dream states
    from dreamgym.world_model import WorldModel

Z_BOUND = 10.0
"""Latents are clamped to [-Z_BOUND, Z_BOUND] (VAE latents live well inside it)."""


class DreamState(NamedTuple):
    """The state of a batch of dreams: the current z (N, Z) and M's LSTM state."""

    z: torch.Tensor  # (N, Z)
    lstm: LSTMState  # h, c: (N, H)


def posterior_sample(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """z drawn from V's posterior N(mu, exp(logvar)), clamped to +-Z_BOUND. (N, Z) -> (N, Z)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return (mu + torch.exp(0.5 * logvar) * eps).clamp_(-Z_BOUND, Z_BOUND)


@torch.no_grad()
def initial_state(wm: WorldModel, n: int, generator: torch.Generator) -> DreamState:
    """n fresh dreams: z0 from random real first frames, zero recurrent state."""
    dev = wm.device
    idx = torch.randint(0, wm.z0_mu.shape[0], (n,), generator=generator, device=dev)
    z = posterior_sample(wm.z0_mu[idx], wm.z0_logvar[idx], generator)
    return DreamState(z, wm.mdnrnn.initial_state(n, device=dev))


@torch.no_grad()
def step(
    wm: WorldModel,
    state: DreamState,
    action: torch.Tensor,
    tau: float,
    generator: torch.Generator,
) -> tuple[DreamState, torch.Tensor, torch.Tensor]:
    """Advance n dreams one step. action (N, A) in the game's action space.

    Returns (next state, reward (N,), terminated (N,) bool).
    """
    executed = wm.game.executed_action(action).to(state.z.dtype)
    lstm, out = wm.mdnrnn.step(state.lstm, state.z, executed)
    z = sample(out.mixture, tau, generator).clamp_(-Z_BOUND, Z_BOUND)
    terminated = out.done_logit > 0  # sigmoid(logit) > 0.5
    if wm.game.constant_reward is not None:
        reward = torch.full_like(out.done_logit, wm.game.constant_reward)
    else:
        reward = out.reward
    return DreamState(z, lstm), reward, terminated


@torch.no_grad()
def follow(wm: WorldModel, lstm: LSTMState, z: torch.Tensor, action: torch.Tensor) -> LSTMState:
    """M's recurrent state after it reads (z, action), without predicting anything.

    This is how the controller's M runs in the real game, where V's z, not M's, comes
    next (``make_real``); it runs the same way beside another world model's dream
    (``evolve``'s ensemble).
    """
    return wm.mdnrnn.cell(lstm, z, wm.game.executed_action(action).to(z.dtype))


def observation(wm: WorldModel, state: DreamState) -> torch.Tensor:
    """The controller's input: (N, Z + H) = [z, h], or (N, Z + 2H) = [z, c, h] for Doom."""
    if wm.game.controller_reads_cell:
        return torch.cat([state.z, state.lstm.c, state.lstm.h], dim=-1)
    return torch.cat([state.z, state.lstm.h], dim=-1)


def select(state: DreamState, index: torch.Tensor) -> DreamState:
    """The rows ``index`` of a batch of dreams (to drop finished ones, or reset some)."""
    return DreamState(state.z[index], LSTMState(state.lstm.h[index], state.lstm.c[index]))


def where(mask: torch.Tensor, new: DreamState, old: DreamState) -> DreamState:
    """Rows from ``new`` where mask (N,) is True, else from ``old``."""
    m = mask.unsqueeze(-1)
    return DreamState(
        torch.where(m, new.z, old.z),
        LSTMState(torch.where(m, new.lstm.h, old.lstm.h), torch.where(m, new.lstm.c, old.lstm.c)),
    )
