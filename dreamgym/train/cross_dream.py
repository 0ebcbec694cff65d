"""A policy scored in the dream of a world model that may not be the one it was trained with.

A controller reads [z, (c,) h] made by its own V (z) and its own M (h, c). In the
real game it sees frames through that V and M (``make_real``); in the dream of
another world model it must see that dream the same way, or its inputs mean
nothing to it. ``sight`` picks how, from what the two world models share:

- ``latent``: the same V and M. The dream's own z and M state are the controller's
  input (as ``gym.make`` gives them): the direct path.
- ``follow``: the same V, another M. The dream's z is the controller's z, and its
  own M follows the z and actions beside the dream to give it its h (as
  ``evolve --ensemble`` does).
- ``pixels``: another V. Each dream frame is V's decoding of the dream's z (what
  ``obs_mode="pixels"`` shows), encoded by the controller's own V (a posterior
  sample, as in the real game) and followed by its own M: ``make_real`` with the
  dream's frames in place of the game's.

``cross_dream_returns`` plays a whole batch of dreams at once, on every path,
for a controller or for a fixed policy (constant action, or random with holds)
that needs no eyes at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dreamgym import dream_core as dc
from dreamgym.controller import ControllerConfig, batched_forward
from dreamgym.games import GameSpec
from dreamgym.rollouts import play_batch
from dreamgym.vae import frames_to_tensor, reparameterize, tensor_to_frames
from dreamgym.world_model import WorldModel

SIGHTS = ("latent", "follow", "pixels")
"""How a controller sees another world model's dream: its own V and M (``latent``), its
own M following the dream's z (``follow``), or its own V and M on the dream's frames
(``pixels``)."""


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa
    )


def sight(dream: WorldModel, own: WorldModel) -> str:
    """How a controller of ``own`` sees the dream of ``dream``: one of ``SIGHTS``."""
    if dream.game.name != own.game.name:
        raise ValueError(f"own: a {own.game.name} world model cannot see a {dream.game.name} dream")
    if dream.vae.config != own.vae.config or not _same_weights(dream.vae, own.vae):
        return "pixels"
    if dream.mdnrnn.config == own.mdnrnn.config and _same_weights(dream.mdnrnn, own.mdnrnn):
        return "latent"
    return "follow"


@torch.no_grad()
def see(dream: WorldModel, own: WorldModel, z: torch.Tensor, generator: torch.Generator):
    """The dream's z (N, Z) as the controller of ``own`` sees it through pixels: (N, Z_own).

    The frame ``obs_mode="pixels"`` would show (uint8), encoded by ``own``'s V to a
    posterior sample clamped like the real game's.
    """
    frames = tensor_to_frames(dream.vae.decode(z))  # (N, 64, 64, 3) uint8
    mu, logvar = own.vae.encode(frames_to_tensor(frames, own.device))
    return reparameterize(mu, logvar, generator).clamp_(-dc.Z_BOUND, dc.Z_BOUND)


@dataclass(frozen=True)
class FixedPolicy:
    """A policy that reads nothing: a ``constant`` action, or ``random``: a uniform action
    in the game's action space held for 1 to ``max_hold`` steps (the paper's random
    policy has ``max_hold=10``)."""

    kind: str
    action: tuple[float, ...] = ()
    max_hold: int = 10

    def __post_init__(self):
        if self.kind not in ("constant", "random"):
            raise ValueError(f"kind: expected 'constant' or 'random', got {self.kind!r}")
        if self.max_hold < 1:
            raise ValueError(f"max_hold: expected an integer >= 1, got {self.max_hold}")

    def actor(self, spec: GameSpec, n: int, rng: np.random.Generator) -> Callable:
        """``act(rows)``: (len(rows), A) float32 actions of the n games ``rows`` (int array),
        as dreamgym's tensors hold them (a ``Discrete`` game's: A = 1, the index)."""
        if spec.discrete:
            low, high = np.zeros(1, np.float32), np.full(1, spec.discrete - 1, np.float32)
        else:
            low, high = spec.action_space.low, spec.action_space.high
        if self.kind == "constant":
            a = np.asarray(self.action, np.float32)
            if (
                a.shape != low.shape
                or not ((a >= low) & (a <= high)).all()
                or (spec.discrete and a[0] != np.round(a[0]))  # an index
            ):
                raise ValueError(
                    f"action: expected {low.shape[0]} values in {spec.action_space}, "
                    f"got {list(self.action)}"
                )
            return lambda rows: np.broadcast_to(a, (len(rows), len(a))).copy()
        held = np.zeros((n, len(low)), np.float32)
        left = np.zeros(n, np.int64)

        def draw(k: int) -> np.ndarray:
            if spec.discrete:
                return rng.integers(0, spec.discrete, (k, 1)).astype(np.float32)
            return rng.uniform(low, high, (k, len(low)))

        def act(rows: np.ndarray) -> np.ndarray:
            new = rows[left[rows] == 0]
            held[new] = draw(len(new))
            left[new] = rng.integers(1, self.max_hold + 1, len(new))
            left[rows] -= 1
            return held[rows].copy()

        return act


@dataclass(frozen=True)
class ControllerActor:
    """A controller's parameters (n,) and its config, with the world model it was trained with."""

    params: torch.Tensor
    config: ControllerConfig
    own: WorldModel


@torch.no_grad()
def cross_dream_returns(
    dream: WorldModel,
    policy: ControllerActor | FixedPolicy,
    n: int,
    tau: float,
    generator: torch.Generator,
    eye_generator: torch.Generator | None = None,
    max_steps: int | None = None,
    rng: np.random.Generator | None = None,
    force: str | None = None,
    dropout: float | None = None,
) -> tuple[np.ndarray, str | None]:
    """Play ``policy`` in n dreams of ``dream`` at ``tau``, all in one batch.

    Returns (returns (n,) float64, the controller's sight or None for a fixed policy).
    ``generator`` draws the dreams (first frames, next z), so every policy scored
    with the same seed starts from the same first frames; ``eye_generator`` draws the
    controller's posterior samples on the ``pixels`` path (None: ``generator``);
    ``rng`` draws a random policy's actions. Episodes end on M's done or at
    ``max_steps`` (None: the game's limit). ``force``: a sight to use instead of the
    one the two world models allow (``pixels`` always works; it checks that path).
    ``dropout``: the dream's dropout rate (None: the rate its M was trained with).
    """
    spec, dev = dream.game, dream.device
    max_steps = max_steps or spec.max_episode_steps
    eye_generator = eye_generator or generator
    state = dc.initial_state(dream, n, generator, dc.check_dropout(dropout))
    how, lstm = None, None
    if isinstance(policy, ControllerActor):
        own, cfg = policy.own, policy.config
        how = sight(dream, own)
        if force is not None and force != how:
            if force not in SIGHTS or SIGHTS.index(force) < SIGHTS.index(how):
                raise ValueError(
                    f"force: expected None or a sight in {SIGHTS[SIGHTS.index(how) :]}"
                )
            how = force
        params = policy.params.to(dev, torch.float32).reshape(1, -1)
        lstm = None if how == "latent" else own.mdnrnn.initial_state(n, device=dev)  # own M's
    else:
        act = policy.actor(spec, n, rng or np.random.default_rng(0))

    def step(state, rows, carry):
        (lstm,) = carry
        if how is None:
            return torch.from_numpy(act(rows.cpu().numpy())).to(dev), carry
        z = see(dream, own, state.z, eye_generator) if how == "pixels" else state.z
        seen = dc.DreamState(z, state.lstm if how == "latent" else lstm)
        y = batched_forward(cfg, params, dc.observation(own, seen).unsqueeze(0))[0]
        action = spec.controller_to_action(y)
        if how != "latent":
            lstm = dc.follow(own, lstm, z, action)
        return action, (lstm,)

    returns, _ = play_batch(dream, state, step, tau, generator, max_steps, (lstm,))
    return returns.cpu().numpy(), how


__all__ = ["SIGHTS", "sight", "see", "FixedPolicy", "ControllerActor", "cross_dream_returns"]
