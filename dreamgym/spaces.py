"""What the envs accept and give: the checks of their arguments, and their spaces.

Shared by the dream envs, the real-game wrappers and the trainers, so each check is
written once and says in one line what the value must be.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from gymnasium import spaces

from dreamgym import dream_core as core
from dreamgym.games import FRAME_SHAPE
from dreamgym.world_model import WorldModel

OBS_MODES = ("latent", "pixels")
"""What a dream observes: [z, (c,) h], or V's decoded 64x64x3 frame."""
PIXELS = ("reconstructed", "raw")
"""What ``make_real(..., obs_mode="pixels")`` shows: V's decoding of the real frame's z,
or the real 64x64 frame."""
STARTS = ("first", "real")
"""Where dreams start: real first frames (the paper), or real states along episodes."""


def check_tau(tau: Any) -> float:
    """tau as a float, or a TypeError/ValueError that says what tau must be."""
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"tau: expected a positive finite number, got {type(tau).__name__}")
    value = float(tau)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"tau: expected a positive finite number (the paper used 0.1 to 1.3), got {value}"
        )
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, or a ValueError naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")
    return int(value)


def check_action(action: Any, space: spaces.Box, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``action`` as a float32 array of ``space.shape`` inside [low, high], or a clear error.

    ``low``/``high`` are the per-dimension bounds (they broadcast over a batch).
    """
    try:
        a = np.asarray(action)
    except (ValueError, TypeError):
        raise TypeError(
            f"action: expected a float array of shape {space.shape} in {space}, "
            f"got {type(action).__name__}"
        ) from None
    if a.shape != space.shape:
        raise ValueError(f"action: expected shape {space.shape} for {space}, got shape {a.shape}")
    if a.dtype.kind != "f":
        raise TypeError(
            f"action: expected floating-point values (float32) in {space}, got dtype {a.dtype}"
        )
    a = a.astype(np.float32, copy=False)
    if not a.flags.writeable:  # torch.from_numpy wants writable memory
        a = a.copy()
    if not ((a >= low) & (a <= high)).all():  # NaN fails both comparisons
        if not np.isfinite(a).all():
            raise ValueError(f"action: expected finite values in {space}, got NaN or inf")
        raise ValueError(
            f"action: out of range; expected values in {space} (low {low.tolist()}, "
            f"high {high.tolist()} per dimension), got min {a.min():.4g}, max {a.max():.4g}"
        )
    return a


def check_discrete_action(action: Any, space: spaces.Space, n: int) -> np.ndarray:
    """``action`` as an int64 array of ``space.shape`` (``()`` for one dream) with values in
    [0, n), or a clear error (the actions of a ``Discrete(n)`` game)."""
    try:
        a = np.asarray(action)
    except (ValueError, TypeError):
        raise TypeError(
            f"action: expected an integer in [0, {n}) for {space}, got {type(action).__name__}"
        ) from None
    if a.shape != space.shape:
        raise ValueError(f"action: expected shape {space.shape} for {space}, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"action: expected integers in [0, {n}) for {space}, got dtype {a.dtype}")
    if ((a < 0) | (a >= n)).any():
        raise ValueError(
            f"action: out of range; expected integers in [0, {n}) for {space}, got min "
            f"{a.min()}, max {a.max()}"
        )
    return a.astype(np.int64)


def check_game_action(action: Any, space: spaces.Space, game) -> np.ndarray:
    """An env action of ``game`` checked against ``space`` (one action, or a batch):
    float32 in the Box, or int64 indices of a discrete game."""
    if game.discrete:
        return check_discrete_action(action, space, game.discrete)
    low, high = game.action_space.low, game.action_space.high
    return check_action(action, space, low, high)


def latent_space(wm: WorldModel, max_episode_steps: int) -> spaces.Box:
    """The latent observation's Box: z in +-Z_BOUND, c in +-T, h in +-1.

    ``|c_t| <= t`` because each LSTM step adds at most 1 in magnitude to the cell,
    so T = max(the game's episode limit, ``max_episode_steps``) bounds c. A shorter
    limit keeps the default space, so dream and real game always agree on it. A
    world model with a bank of real states adds the bank's largest ``|c|`` (a dream
    may start there), rounded up, in dream and real game alike.
    """
    Z, H = wm.mdnrnn.config.z_dim, wm.mdnrnn.config.hidden
    parts = [np.full(Z, core.Z_BOUND)]
    if wm.game.controller_reads_cell:
        T = max(wm.game.max_episode_steps, max_episode_steps)
        if wm.starts is not None and len(wm.starts):
            T += math.ceil(float(wm.starts.lstm.c.abs().max()))
        parts.append(np.full(H, float(T)))
    parts.append(np.ones(H))
    high = np.concatenate(parts).astype(np.float32)
    return spaces.Box(-high, high, dtype=np.float32)


def observation_space(wm: WorldModel, obs_mode: str, max_episode_steps: int) -> spaces.Box:
    """The dream's observation space for ``obs_mode``: ``latent_space`` or 64x64x3 frames."""
    if obs_mode == "latent":
        return latent_space(wm, max_episode_steps)
    return spaces.Box(0, 255, FRAME_SHAPE, np.uint8)


__all__ = [
    "OBS_MODES", "PIXELS", "STARTS", "check_tau", "check_choice", "check_positive_int",
    "check_action", "check_discrete_action", "check_game_action", "latent_space",
    "observation_space",
]  # fmt: skip
