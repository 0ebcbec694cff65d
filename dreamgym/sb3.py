"""Stable-Baselines3 over the native batched dream: ``as_vec_env(venv)`` is an SB3 ``VecEnv``.

SB3 steps its ``VecEnv`` with numpy arrays and expects finished environments to
restart in the same step, the last observation in ``infos[i]["terminal_observation"]``
and ``infos[i]["TimeLimit.truncated"]`` set on truncation. The adapter switches
the dream to ``AutoresetMode.SAME_STEP`` and translates; the dreams still step
as one batched tensor computation.

```python
>>> from stable_baselines3 import PPO
>>> venv = dreamgym.sb3.as_vec_env(gym.make_vec("DreamDoom-v0", num_envs=16))
>>> PPO("MlpPolicy", venv).learn(100_000)
>>> venv.env_method("set_tau", 1.0)   # every dream at once
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from dreamgym._deps import require
from dreamgym.dream import DreamVectorEnv

require("stable_baselines3", "sb3")
from stable_baselines3.common.vec_env import VecEnv  # noqa: E402


class DreamSB3VecEnv(VecEnv):
    """A ``DreamVectorEnv`` as an SB3 ``VecEnv`` (see ``as_vec_env``)."""

    def __init__(self, env: DreamVectorEnv):
        self.env = env
        self.num_envs = env.num_envs  # read by get_attr during VecEnv.__init__
        env.autoreset_mode = AutoresetMode.SAME_STEP
        self._actions: np.ndarray | None = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    def reset(self) -> np.ndarray:
        seed = self._seeds[0]  # one generator drives every dream: the first seed decides
        options = self._options[0] or None
        obs, _ = self.env.reset(seed=seed, options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, reward, terminated, truncated, infos = self.env.step(self._actions)
        dones = terminated | truncated
        out: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):  # only the envs whose episode ended
            episode = infos["episode"]
            out[i] = {
                "terminal_observation": infos["final_obs"][i],
                "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                "episode": {"r": float(episode["r"][i]), "l": int(episode["l"][i])},
            }
        return obs, reward.astype(np.float32, copy=False), dones, out

    def close(self) -> None:
        self.env.close()

    def _check_all(self, indices: Any) -> int:
        """How many envs ``indices`` names; the dreams share one state, so all or nothing."""
        idx = list(self._get_indices(indices))
        if sorted(idx) != list(range(self.num_envs)):
            raise ValueError(
                f"indices: the {self.num_envs} dreams share one batched state and one tau; "
                f"expected None (all of them), got {indices!r}"
            )
        return len(idx)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        value = getattr(self.env, attr_name)
        return [value] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        self._check_all(indices)
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *args, indices: Any = None, **kwargs) -> list[Any]:
        n = self._check_all(indices)
        return [getattr(self.env, method_name)(*args, **kwargs)] * n

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.env.render()
        return [None] * self.num_envs if frames is None else list(frames)


def as_vec_env(env: gym.vector.VectorEnv) -> DreamSB3VecEnv:
    """An SB3 ``VecEnv`` over a ``DreamVectorEnv`` (e.g. from ``gym.make_vec``).

    The env is switched to ``AutoresetMode.SAME_STEP`` (SB3's convention) and
    reset by SB3 before its first step. Methods and attributes reach the batched
    env once (``env_method("set_tau", x)`` sets every dream's tau); ``indices``
    must name all the envs.
    """
    native = env.unwrapped
    if not isinstance(native, DreamVectorEnv):
        raise TypeError(
            "env: expected a DreamVectorEnv (gym.make_vec(<dream id>, num_envs=N)), "
            f"got {type(native).__name__}"
        )
    return DreamSB3VecEnv(native)


__all__ = ["as_vec_env", "DreamSB3VecEnv"]
