"""The dream environments: a trained world model played as a Gymnasium env.

``DreamVectorEnv`` steps N dreams as one batched tensor computation (the native
``vector_entry_point``); ``DreamEnv`` is the same machinery with one row, so both
give the same trajectory for the same seed and actions. The math lives in
``dream_core``; this module adds spaces, seeding, episode clocks, autoreset and
input checks.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from dreamgym import dream_core as core
from dreamgym.dreams import Dreams
from dreamgym.games import ENV_IDS, GameSpec, get_game
from dreamgym.spaces import (
    check_positive_int,
    check_tau,
)  # fmt: skip
from dreamgym.world_model import WorldModel

# ---------------------------------------------------------------- the envs


class EpisodeEndedError(gym.error.ResetNeeded, ValueError):
    """``step`` on a dream whose episode has ended, before the ``reset`` it needs."""


class DreamEnv(gym.Env):
    """One dream: a trained world model (V + M) of a game, played as a Gymnasium env.

    ## Description

    The world model of Ha & Schmidhuber, "World Models" (2018): V, a convolutional
    VAE, compresses a 64x64 frame of the real game to a latent z; M, an LSTM with a
    mixture density head, predicts the next z, whether the episode ends, and (for
    CarRacing) the reward. The dream feeds M's predictions back into M, so an agent
    can train without the real game and then run unchanged in it
    (``dreamgym.make_real``).

    ## Action Space

    The real game's: ``Box(-1, 1, (1,), float32)`` for Doom TakeCover (below -1/3
    moves left, above 1/3 moves right, otherwise stays; M consumes the move
    executed, -1, 0 or +1) and ``Box([-1, 0, 0], [1, 1, 1], float32)`` (steer, gas,
    brake) for CarRacing. Actions must be finite floats inside the box; anything
    else raises ``ValueError``/``TypeError`` and leaves the dream untouched.
    A game with ``Discrete(n)`` actions (``dreamgym.game_spec``) has the same
    ``Discrete(n)`` here: integers in [0, n); M reads the one-hot of the action.

    ## Observation Space

    ``obs_mode="latent"`` (default): the controller's input in the paper, one
    float32 vector: ``[z, c, h]`` for Doom (64 + 512 + 512), ``[z, h]`` for
    CarRacing (32 + 256), where h and c are M's LSTM state. Bounds: z in
    ``+-dream_core.Z_BOUND`` (latents are clamped there), h in ``+-1``, c in
    ``+-2100`` for Doom, the episode limit (each step changes c by less than 1;
    only a longer ``max_episode_steps`` widens this bound).
    ``obs_mode="pixels"``: V's decoding of z, ``Box(0, 255, (64, 64, 3), uint8)``.

    ## Rewards

    Doom: +1 per step alive, as in the real game. CarRacing: M's reward head.

    ## Starting State

    ``starts="first"`` (default, the paper's): z0 = mu + sigma * eps of a random
    real first frame's encoding (the world model's bank of first frames); M's state
    h0 = c0 = 0.

    ``starts="real"``: a random state the real game went through, from the world
    model's bank of real states (every 10th frame of its recorded episodes, a
    random subset): z0 drawn from V's posterior of that frame, and M's h and c after
    reading the episode up to it. Short dreams from such starts (with
    ``max_episode_steps=250``, say) keep M near what it was fitted on and show the
    agent bends and speeds a first frame does not; the shipped CarRacing C was
    trained this way. The episode clock starts at 0 all the same. With an ensemble,
    the member that plays the dream starts from its own state at that frame.

    ## Episode End

    Terminates when M's done head gives p > 0.5 (not sampled; tau does not apply),
    as in the paper. With ``hazard`` > 0 it also terminates, each step, with
    probability hazard x M's calibrated chance of dying (see ``hazard`` below).
    Truncates (unless terminated) after ``max_episode_steps`` steps, the game's
    limit (Doom 2100, CarRacing 1000); the env does this itself. ``gym.make`` also
    adds ``TimeLimit`` at the same registered limit, so it never fires first; a
    smaller ``gym.make(..., max_episode_steps=n)`` just truncates earlier.

    ## Arguments

    ```python
    >>> import gymnasium as gym, dreamgym
    >>> env = gym.make("DreamDoom-v0", tau=1.15, world_model="models/doom_take_cover")
    >>> env = gym.make("DreamCarRacing-v0", obs_mode="pixels", render_mode="rgb_array")
    >>> env = gym.make("DreamCarRacing-v0", starts="real", max_episode_steps=250)
    ```

    * ``tau``: sampling temperature, a finite float > 0 (Doom default 1.15,
      CarRacing 1.0). Settable later: ``env.unwrapped.set_tau(x)`` or ``.tau = x``.
    * ``obs_mode``: ``"latent"`` or ``"pixels"``.
    * ``world_model``: a folder (``dreamgym export`` / ``WorldModel.save``), a
      ``WorldModel``, or None for the weights shipped in ``models/<game>/``.
    * ``device``: where M runs (``"cpu"``, ``"cuda"``); None keeps a given
      ``WorldModel`` where it is and loads folders on the CPU.
    * ``render_mode``: None or ``"rgb_array"`` (V's decoding of the current z).
    * ``max_episode_steps``: the truncation limit (default: the game's).
    * ``starts``: ``"first"`` or ``"real"`` (see Starting State); ``"real"`` needs
      a world model with a bank of real states, as the shipped CarRacing one has.
    * ``dropout``: the dropout rate of M's heads in these dreams; None (default) is
      the rate M was trained with (the world model's config), 0 turns it off.
    * ``members``: with an ensemble of Ms, ``"sample"`` (default) draws the member
      that plays each dream at reset; an int plays every dream with that member.
    * ``hazard``: a number >= 0 (default 0, the paper's dream). Each step the dream
      also ends with probability ``hazard`` x sigmoid(done_logit - log 10), M's
      chance of dying with ``fit-mdnrnn``'s 10x weight on deaths undone. The paper's
      dream ends only where M is sure, so the near misses it foresees cost nothing;
      at 3 the shipped Doom dream pays a stock agent 1.1-1.3x what the game pays,
      against 2.0-2.2x at 0 (docs/honest_dreams.md). Settable later: ``env.unwrapped.hazard = x``.
    * ``game``: set by the registered id (``doom_take_cover``, ``car_racing``, or the
      game of a folder ``dreamgym.register`` registered, which also sets ``world_model``).

    ## World Model

    V and M load from ``world_model`` (safetensors + JSON, never pickle). tau
    divides M's mixture logits and multiplies each gaussian's sigma by sqrt(tau):
    higher tau makes a harder, more uncertain dream (the paper's Doom agent
    transferred best when trained at 1.15); tau -> 0 follows the most likely
    mode's mean.

    A world model may be made hard to exploit: M trained with dropout (each dream
    then draws its own mask when it starts) and an ensemble of Ms sharing V (each
    dream played by one member drawn at reset). Both draws come from the reset
    seed, so the same seed gives the same dream; the controller's observation
    always holds member 0's state, as in the real game. A world model of one M
    without dropout dreams exactly as before.

    ## Version History

    * v0: initial release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 35}

    def __init__(
        self,
        game: str = "doom_take_cover",
        world_model: str | os.PathLike | WorldModel | None = None,
        tau: float | None = None,
        obs_mode: str = "latent",
        device: str | torch.device | None = None,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        starts: str = "first",
        dropout: float | None = None,
        members: str | int = "sample",
        hazard: float = 0.0,
    ):
        self._dreams = Dreams(
            game, 1, world_model, tau, obs_mode, device, render_mode, max_episode_steps, starts,
            dropout, members, hazard,
        )  # fmt: skip
        self.metadata = {**self.metadata, "render_fps": self.game.render_fps}
        self.render_mode = render_mode
        self.observation_space = self._dreams.observation_space
        self.action_space = self._dreams.action_space

    @property
    def game(self) -> GameSpec:
        return self._dreams.wm.game

    @property
    def world_model(self) -> WorldModel:
        return self._dreams.wm

    @property
    def max_episode_steps(self) -> int:
        return self._dreams.max_episode_steps

    @property
    def tau(self) -> float:
        return self._dreams.tau

    @tau.setter
    def tau(self, value: float) -> None:
        self._dreams.tau = check_tau(value)

    def set_tau(self, tau: float) -> None:
        """Change the temperature from the next step on (same checks as the constructor)."""
        self.tau = tau

    @property
    def hazard(self) -> float:
        return self._dreams.hazard

    @hazard.setter
    def hazard(self, value: float) -> None:
        self._dreams.hazard = core.check_hazard(value)

    _ended = False  # the episode terminated or truncated: step() needs a reset() first

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._dreams.seeded:
            self._dreams.seed(self.np_random)
        self._dreams.restart()
        self._ended = False
        return self._dreams.observe()[0], {}

    def step(self, action):
        if self._dreams.state is None:
            raise gym.error.ResetNeeded("step: call reset() before the first step()")
        if self._ended:
            raise EpisodeEndedError(
                "step: the episode has ended (terminated or truncated); call reset() first"
            )
        a = self._dreams.check_action(action, self.action_space)
        reward, terminated, truncated = self._dreams.advance(a[None])
        obs = self._dreams.observe()[0]
        self._ended = bool(terminated[0] or truncated[0])
        return obs, float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render: the env was created with render_mode=None")
            return None
        if self._dreams.state is None:
            raise gym.error.ResetNeeded("render: call reset() first")
        return self._dreams.frames()[0].copy()


class DreamVectorEnv(VectorEnv):
    """``num_envs`` dreams stepped as one batched tensor computation, on CPU or CUDA.

    Everything in ``DreamEnv`` holds per dream (spaces, rewards, episode end,
    arguments); ``DreamEnv`` is this env with one row, so both give the same
    trajectories for the same seed and actions, across episodes too.

    ```python
    >>> venv = gym.make_vec("DreamDoom-v0", num_envs=1024, device="cuda")
    ```

    * ``autoreset_mode``: ``AutoresetMode.NEXT_STEP`` (default; the step after an
      episode ends returns the first observation of the next one, with reward 0
      and the action ignored), ``SAME_STEP`` (the ending step already returns the
      next episode's first observation; the last one is in ``infos["final_obs"]``,
      an object array, with mask ``infos["_final_obs"]``, and ``infos["final_info"]``
      is empty), or ``DISABLED`` (finished dreams wait for
      ``reset(options={"reset_mask": mask})``; stepping them raises).
    * ``reset(options={"reset_mask": mask})`` (a (num_envs,) bool array) restarts
      only those dreams; the others keep going.
    * Episode statistics, as Gymnasium's ``RecordEpisodeStatistics`` reports them:
      on the step an episode ends, ``infos["episode"] = {"r": returns (float64),
      "l": lengths (int64)}`` (0 where no episode ended) and ``infos["_episode"]``
      the mask of ended episodes. There is no wall-clock ``"t"``, so infos are
      deterministic.
    * Rewards are float32. Randomness comes from one ``torch.Generator`` on the
      world model's device, seeded from ``reset(seed=...)``; a dream draws
      nothing on steps where it only restarts.
    """

    metadata = {
        "render_modes": ["rgb_array"],
        "render_fps": 35,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        game: str = "doom_take_cover",
        world_model: str | os.PathLike | WorldModel | None = None,
        tau: float | None = None,
        obs_mode: str = "latent",
        device: str | torch.device | None = None,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        starts: str = "first",
        dropout: float | None = None,
        members: str | int = "sample",
        hazard: float = 0.0,
    ):
        num_envs = check_positive_int("num_envs", num_envs)
        self.metadata = {**self.metadata, "render_fps": get_game(game).render_fps}
        self.autoreset_mode = autoreset_mode
        self._dreams = Dreams(
            game, num_envs, world_model, tau, obs_mode, device, render_mode, max_episode_steps,
            starts, dropout, members, hazard,
        )  # fmt: skip
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.single_observation_space = self._dreams.observation_space
        self.single_action_space = self._dreams.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._pending = np.zeros(num_envs, np.bool_)  # ended last step, not yet restarted

    # the same accessors as DreamEnv: game, world model, episode limit, temperature, hazard
    game = DreamEnv.game
    world_model = DreamEnv.world_model
    max_episode_steps = DreamEnv.max_episode_steps
    tau = DreamEnv.tau
    set_tau = DreamEnv.set_tau
    hazard = DreamEnv.hazard

    @property
    def autoreset_mode(self) -> AutoresetMode:
        return self.metadata["autoreset_mode"]

    @autoreset_mode.setter
    def autoreset_mode(self, mode: AutoresetMode | str) -> None:
        """Switch modes; dreams that ended under NEXT_STEP still restart on the next step."""
        if not isinstance(mode, AutoresetMode):  # "NextStep", "next_step", "NEXT_STEP", ...
            key = str(mode).replace("_", "").lower()
            modes = {m.value.lower(): m for m in AutoresetMode}
            if key not in modes:
                raise ValueError(
                    f"autoreset_mode: expected an AutoresetMode or one of "
                    f"{[m.value for m in AutoresetMode]}, got {mode!r}"
                )
            mode = modes[key]
        self.metadata = {**self.metadata, "autoreset_mode": mode}

    def _reset_mask(self, options: dict | None) -> np.ndarray | None:
        if not options or "reset_mask" not in options:
            return None
        mask = options["reset_mask"]
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            raise TypeError(
                f"options['reset_mask']: expected a numpy bool array of shape ({self.num_envs},), "
                f"got {type(mask).__name__} {getattr(mask, 'dtype', '')}".rstrip()
            )
        if mask.shape != (self.num_envs,):
            raise ValueError(
                f"options['reset_mask']: expected shape ({self.num_envs},), got {mask.shape}"
            )
        if not mask.any():
            raise ValueError("options['reset_mask']: expected at least one True value")
        if self._dreams.state is None:
            raise ValueError("options['reset_mask']: the first reset() must reset every dream")
        return mask.copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        mask = self._reset_mask(options)
        super().reset(seed=None if seed is None else int(seed))
        if seed is not None or not self._dreams.seeded:
            self._dreams.seed(self.np_random)
        self._dreams.restart(mask)
        if mask is None:
            self._pending[:] = False
        else:
            self._pending[mask] = False
        return self._dreams.observe(), {}

    def step(self, actions):
        d = self._dreams
        if d.state is None:
            raise gym.error.ResetNeeded("step: call reset() before the first step()")
        a = d.check_action(actions, self.action_space)
        mode = self.autoreset_mode
        if self._pending.any():
            if mode == AutoresetMode.DISABLED:
                rows = np.flatnonzero(self._pending).tolist()
                raise EpisodeEndedError(
                    f"actions: dreams {rows[:10]} have ended; with autoreset_mode DISABLED "
                    "restart them with reset(options={'reset_mask': mask}) before stepping"
                )
            reward, terminated, truncated = d.advance(a, active=~self._pending)
            d.restart(self._pending)
        else:
            reward, terminated, truncated = d.advance(a)
        done = terminated | truncated
        infos: dict[str, Any] = {}
        obs = d.observe()
        if done.any():
            infos["episode"] = {"r": np.where(done, d.ret, 0.0), "l": np.where(done, d.t, 0)}
            infos["_episode"] = done.copy()
            if mode == AutoresetMode.SAME_STEP:
                final = np.full(self.num_envs, None, dtype=object)
                for i in np.flatnonzero(done):  # only the rows that ended
                    final[i] = obs[i].copy()
                infos |= {
                    "final_obs": final,
                    "_final_obs": done.copy(),
                    "final_info": {},
                    "_final_info": done.copy(),
                }
                d.restart(done)
                obs = d.observe()
                done = np.zeros_like(done)
        self._pending = done
        return obs, reward, terminated, truncated, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        """V's decoding of every dream's z: a tuple of (64, 64, 3) uint8 frames."""
        if self.render_mode is None:
            gym.logger.warn("render: the env was created with render_mode=None")
            return None
        if self._dreams.state is None:
            raise gym.error.ResetNeeded("render: call reset() first")
        return tuple(self._dreams.frames().copy())


def register_envs() -> None:
    """Register the dream ids with Gymnasium (idempotent)."""
    for env_id, game in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="dreamgym.dream:DreamEnv",
            vector_entry_point="dreamgym.dream:DreamVectorEnv",
            max_episode_steps=get_game(game).max_episode_steps,
            kwargs={"game": game, "tau": get_game(game).default_tau},
        )


__all__ = ["DreamEnv", "DreamVectorEnv", "Dreams", "register_envs"]
