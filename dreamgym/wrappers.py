"""The real game seen the way the dream shows itself, so an agent runs unchanged in both.

``make_real("DreamDoom-v0")`` is the real game whose observation and action
spaces are equal to the dream's (latent mode): every real frame goes through V
(z sampled from the posterior, clamped like the dream's), and M's LSTM state is
stepped with the action the game executed, exactly as the dream steps it.
``make_real(..., obs_mode="pixels")`` shows the real game as the dream's pixel
observation does: V's decoding of that z (``pixels="reconstructed"``, the
default), or the real 64x64 frame itself (``pixels="raw"``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dreamgym import dream_core as core
from dreamgym.games import ENV_IDS, GameSpec, get_game
from dreamgym.shipped import load_world_model
from dreamgym.spaces import (
    OBS_MODES,
    PIXELS,
    check_choice,
    check_game_action,
    check_positive_int,
    latent_space,
)
from dreamgym.spaces import observation_space as dream_observation_space
from dreamgym.vae import frames_to_tensor, reparameterize, tensor_to_frames
from dreamgym.world_model import WorldModel


class LatentObservation(gym.Wrapper):
    """A real game (64x64x3 uint8 frames) observed as the dream's [z, (c,) h] vector.

    Reset encodes the first frame and zeroes M's state; each step runs the real
    game, advances M with (z_t, executed a_t) and encodes the new frame. z is a
    posterior sample drawn from a ``torch.Generator`` seeded by ``reset(seed=...)``.
    Reward, termination and truncation are the real game's. Actions are checked
    like the dream's (``ValueError``/``TypeError``, nothing stepped). ``frame`` is
    the last real frame, the one V encoded into the current observation.
    """

    def __init__(self, env: gym.Env, world_model: WorldModel, max_episode_steps: int):
        super().__init__(env)
        self.world_model = world_model
        self.observation_space = latent_space(world_model, max_episode_steps)
        self.action_space = world_model.game.action_space
        self._generator = torch.Generator(device=world_model.device)
        self._seeded = False
        self._state: core.DreamState | None = None
        self.frame: np.ndarray | None = None

    @torch.no_grad()
    def _encode(self, frame: np.ndarray) -> torch.Tensor:
        """(64, 64, 3) uint8 frame -> (1, Z) posterior sample."""
        wm = self.world_model
        self.frame = np.array(frame)  # a writable copy
        x = frames_to_tensor(self.frame[None], wm.device)
        mu, logvar = wm.vae.encode(x)
        return reparameterize(mu, logvar, self._generator).clamp_(-core.Z_BOUND, core.Z_BOUND)

    @property
    def spec(self) -> None:
        """None: ``make_real`` builds this env, not ``gym.make``, so no spec can remake it."""
        return None

    def _observe(self) -> np.ndarray:
        return core.observation(self.world_model, self._state)[0].cpu().numpy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        frame, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._generator.manual_seed(int(seed))
            self._seeded = True
        elif not self._seeded:
            self._generator.seed()
            self._seeded = True
        wm = self.world_model
        self._state = core.DreamState(self._encode(frame), wm.mdnrnn.initial_state(1, wm.device))
        return self._observe(), info

    @torch.no_grad()
    def step(self, action: Any):
        wm = self.world_model
        a = check_game_action(action, self.action_space, wm.game)
        if self._state is None:
            raise gym.error.ResetNeeded("step: call reset() before the first step()")
        frame, reward, terminated, truncated, info = self.env.step(a.item() if a.ndim == 0 else a)
        # (1, A) as M reads it; a discrete action is its index, (1, 1)
        action = torch.as_tensor(a, dtype=torch.float32, device=wm.device).reshape(1, -1)
        lstm = core.follow(wm, self._state.lstm, self._state.z, action)
        self._state = core.DreamState(self._encode(frame), lstm)
        return self._observe(), reward, terminated, truncated, info


class PixelObservation(LatentObservation):
    """A real game observed as the dream's pixel observation: ``Box(0, 255, (64, 64, 3), uint8)``.

    ``pixels="reconstructed"``: V's decoding of the z that ``LatentObservation``
    draws from V's posterior of the real frame, the same kind of image the dream
    shows (the dream decodes M's z), so a CNN sees in the real game what it saw
    in training, blur included. ``pixels="raw"``: the real 64x64 frame, sharper
    and with details V drops. Everything else (M's state, seeding, action checks,
    ``frame``) is ``LatentObservation``'s.
    """

    def __init__(self, env: gym.Env, world_model: WorldModel, max_episode_steps: int, pixels: str):
        super().__init__(env, world_model, max_episode_steps)
        self.pixels = check_choice("pixels", pixels, PIXELS)
        self.observation_space = dream_observation_space(world_model, "pixels", max_episode_steps)

    @torch.no_grad()
    def _observe(self) -> np.ndarray:
        if self.pixels == "raw":
            return self.frame.copy()
        return tensor_to_frames(self.world_model.vae.decode(self._state.z))[0]


def game_of(dream_id: str) -> tuple[GameSpec, dict]:
    """The game behind a dream id (aliases included), and the keyword arguments its
    Gymnasium registration gives (``dreamgym.register`` gives the ``world_model`` folder)."""
    if not isinstance(dream_id, str) or dream_id not in ENV_IDS:
        raise ValueError(f"dream_id: expected one of {sorted(ENV_IDS)}, got {dream_id!r}")
    kwargs = gym.spec(dream_id).kwargs if dream_id in gym.registry else {}
    return get_game(ENV_IDS[dream_id]), kwargs


def make_real(
    dream_id: str,
    world_model: str | os.PathLike | WorldModel | None = None,
    device: str | torch.device | None = None,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
    obs_mode: str = "latent",
    pixels: str = "reconstructed",
    **kwargs: Any,
) -> gym.Env:
    """The real game of ``dream_id`` with the dream's observation and action spaces.

    ``world_model`` as in the dream (a folder, a ``WorldModel``, None: shipped weights);
    ``render_mode="rgb_array"`` renders the real game's screen; other keyword
    arguments go to the real game's factory (``dreamgym.make_game``).

    ``obs_mode``: ``"latent"`` (default, ``LatentObservation``: [z, (c,) h] as the
    dream gives it) or ``"pixels"`` (``PixelObservation``: 64x64x3 uint8 frames, the
    space of the dream's ``obs_mode="pixels"``). With pixels, ``pixels`` says which
    frames: ``"reconstructed"`` (default) is V's decoding of the real frame's z, the
    kind of image the dream shows (the dream's pixels are V's decodings too), so an
    agent trained on dream pixels meets the same blur and colours; ``"raw"`` is the
    real frame resized to 64x64, sharper and with details V drops, what a CNN
    trained on real frames expects.

    ```python
    >>> real = dreamgym.make_real("DreamDoom-v0", world_model="models/doom_take_cover")
    >>> real.observation_space == gym.make("DreamDoom-v0", ...).observation_space
    True
    ```
    """
    spec, registered = game_of(dream_id)
    world_model = registered.get("world_model") if world_model is None else world_model
    check_choice("obs_mode", obs_mode, OBS_MODES)
    check_choice("pixels", pixels, PIXELS)
    if obs_mode == "latent" and pixels != "reconstructed":
        raise ValueError(f"pixels={pixels!r}: only with obs_mode='pixels'")
    wm = load_world_model(spec, world_model, device)  # fail before starting the game
    limit = spec.max_episode_steps if max_episode_steps is None else max_episode_steps
    limit = check_positive_int("max_episode_steps", limit)
    env = spec.make_real(render_mode=render_mode, max_episode_steps=limit, **kwargs)
    if obs_mode == "pixels":
        return PixelObservation(env, wm, limit, pixels)
    return LatentObservation(env, wm, limit)


def _worker_env(dream_id: str, kwargs: dict) -> gym.Env:
    torch.set_num_threads(1)  # one game per process; don't oversubscribe the cores
    return make_real(dream_id, **kwargs)


def make_real_vec(
    dream_id: str,
    num_envs: int,
    vector_kwargs: dict | None = None,
    **kwargs: Any,
) -> gym.vector.AsyncVectorEnv:
    """``num_envs`` real games in worker processes (Gymnasium's ``AsyncVectorEnv``).

    ``kwargs`` go to ``make_real`` in each worker; the world model is resolved once
    here (so a missing one fails now) and handed to the workers. ``vector_kwargs``
    go to ``AsyncVectorEnv`` (e.g. ``autoreset_mode``, ``context``).
    """
    num_envs = check_positive_int("num_envs", num_envs)
    spec, registered = game_of(dream_id)
    if kwargs.pop("device", None) not in (None, "cpu"):
        raise ValueError("device: the workers of make_real_vec run V and M on the CPU")
    folder = kwargs.get("world_model") or registered.get("world_model")
    kwargs["world_model"] = load_world_model(spec, folder, "cpu")
    fn = functools.partial(_worker_env, dream_id, kwargs)
    return gym.vector.AsyncVectorEnv([fn] * num_envs, **(vector_kwargs or {}))


__all__ = ["make_real", "make_real_vec", "LatentObservation", "PixelObservation"]
