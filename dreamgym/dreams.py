"""A batch of dreams: the state, clocks, returns and generator both dream envs drive.

``Dreams`` holds n dreams of one world model and steps them with ``dream_core``'s
math; ``DreamEnv`` (one row) and ``DreamVectorEnv`` (n rows) add the Gymnasium
API, autoreset and input checks on top (``dreamgym.dream``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from dreamgym import dream_core as core
from dreamgym.games import GameSpec, get_game
from dreamgym.shipped import load_world_model
from dreamgym.spaces import (
    OBS_MODES,
    STARTS,
    check_game_action,
    check_positive_int,
    check_tau,
    observation_space,
)  # fmt: skip
from dreamgym.vae import tensor_to_frames
from dreamgym.world_model import WorldModel


class Dreams:
    """n dreams of one world model: state, clocks, returns, and the generator they draw from.

    Both envs drive one of these; it has no notion of autoreset.
    """

    def __init__(
        self,
        game: str | GameSpec,
        n: int,
        world_model: str | os.PathLike | WorldModel | None,
        tau: float | None,
        obs_mode: str,
        device: str | torch.device | None,
        render_mode: str | None,
        max_episode_steps: int | None,
        starts: str = "first",
        dropout: float | None = None,
        members: str | int = "sample",
        hazard: float = 0.0,
    ):
        spec = get_game(game)
        self.tau = check_tau(spec.default_tau if tau is None else tau)
        if not isinstance(obs_mode, str) or obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode: expected one of {OBS_MODES}, got {obs_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        limit = spec.max_episode_steps if max_episode_steps is None else max_episode_steps
        self.max_episode_steps = check_positive_int("max_episode_steps", limit)
        self.n = n
        self.obs_mode = obs_mode
        self.wm = load_world_model(spec, world_model, device)
        if not isinstance(starts, str) or starts not in STARTS:
            raise ValueError(f"starts: expected one of {STARTS}, got {starts!r}")
        if starts == "real" and (self.wm.starts is None or not len(self.wm.starts)):
            raise ValueError(
                "starts='real': this world model has no bank of real states (assemble "
                "and export write one from the run's encoded episodes); use starts='first'"
            )
        self.starts = starts
        self.dropout = core.check_dropout(dropout)
        self.hazard = core.check_hazard(hazard)
        self.members = core.check_members(self.wm, members)
        if starts == "real":
            core.check_bank(self.wm, self.wm.starts, self.members)
        self.observation_space = observation_space(self.wm, obs_mode, self.max_episode_steps)
        self.action_space = spec.action_space
        self.generator = torch.Generator(device=self.wm.device)
        self.seeded = False
        self.state: core.DreamState | None = None
        self.t = np.zeros(n, np.int64)
        self.ret = np.zeros(n, np.float64)
        self._frames: np.ndarray | None = None

    def check_action(self, action: Any, space: spaces.Space) -> np.ndarray:
        return check_game_action(action, space, self.wm.game)

    def seed(self, np_random: np.random.Generator) -> None:
        self.generator.manual_seed(int(np_random.integers(2**63 - 1)))
        self.seeded = True

    def _index(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rows).to(self.wm.device)

    def fresh(self, n: int) -> core.DreamState:
        """n new dream states: from real first frames, or from the bank of real states."""
        if self.starts == "real":
            return core.from_bank(
                self.wm, self.wm.starts, n, self.generator, self.dropout, self.members
            )
        state = core.first_frames(self.wm, n, self.generator)
        return core.vary(self.wm, state, self.generator, self.dropout, self.members)

    def restart(self, rows: np.ndarray | None = None) -> None:
        """Fresh dreams in every row, or in the rows where the (n,) mask ``rows`` is True."""
        if rows is None or self.state is None:
            self.state = self.fresh(self.n)
            self.t[:] = 0
            self.ret[:] = 0.0
        else:
            idx = np.flatnonzero(rows)
            if idx.size == 0:
                return
            put(self.state, self._index(idx), self.fresh(idx.size))
            self.t[idx] = 0
            self.ret[idx] = 0.0
        self._frames = None

    def advance(
        self, action: np.ndarray, active: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step every dream, or those where the (n,) mask ``active`` is True (others keep still).

        action (n, A) float32, or (n,) int64 for a discrete game, already checked. Returns
        reward (n,) float32, terminated and truncated (n,) bool; rows that did not step get
        0, False, False.
        """
        a = torch.from_numpy(action).to(self.wm.device)
        if self.wm.game.discrete:
            a = a.reshape(self.n, 1)  # (n, 1): the index, as M's executed_action reads it
        if active is None:
            self.state, r, d = core.step(
                self.wm, self.state, a, self.tau, self.generator, self.hazard
            )
            reward, terminated = r.cpu().numpy(), d.cpu().numpy()
            self.t += 1
            stepped = None
        else:
            reward, terminated = np.zeros(self.n, np.float32), np.zeros(self.n, np.bool_)
            idx = np.flatnonzero(active)
            if idx.size:  # step only these rows, so finished dreams draw no random numbers
                i = self._index(idx)
                sub, r, d = core.step(
                    self.wm, core.select(self.state, i), a[i], self.tau, self.generator,
                    self.hazard,
                )  # fmt: skip
                put(self.state, i, sub)
                reward[idx], terminated[idx] = r.cpu().numpy(), d.cpu().numpy()
                self.t[idx] += 1
            stepped = active
        self.ret += reward
        truncated = (self.t >= self.max_episode_steps) & ~terminated
        if stepped is not None:
            truncated &= stepped
        self._frames = None
        return reward, terminated, truncated

    def frames(self) -> np.ndarray:
        """V's decoding of every dream's z: (n, 64, 64, 3) uint8 (cached until the next change)."""
        if self._frames is None:
            with torch.no_grad():
                self._frames = tensor_to_frames(self.wm.vae.decode(self.state.z))
        return self._frames

    def observe(self) -> np.ndarray:
        """(n, D) float32 latents [z, (c,) h], or (n, 64, 64, 3) uint8 frames; a new array."""
        if self.obs_mode == "latent":
            return core.observation(self.wm, self.state).cpu().numpy()
        return self.frames().copy()


def put(state: core.DreamState, index: torch.Tensor, rows: core.DreamState) -> None:
    """Write ``rows`` into the rows ``index`` of ``state``, in place (the env owns its state)."""
    core._map(lambda a, b: a.index_copy_(0, index, b), state, rows)


__all__ = ["Dreams", "put"]
