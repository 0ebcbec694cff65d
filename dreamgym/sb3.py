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

PPO can also train the paper's C itself: ``ControllerActorCritic`` is an actor
whose deterministic action is exactly a dreamgym controller (tanh of a linear map
of the observation, with an optional tanh hidden layer) acting in the controller's
tanh space (``as_vec_env(venv, actions="controller")``), beside a separate value
MLP. It can start from a trained controller (CMA-ES's, say) and its actor saves
as a controller folder, so PPO's result loads, evaluates and ships like any other
C, without pickle:

```python
>>> venv = as_vec_env(gym.make_vec("DreamCarRacing-v0", num_envs=64), actions="controller")
>>> model = PPO(ControllerActorCritic, venv, policy_kwargs={"log_std_init": -1.5})
>>> set_controller(model.policy, dreamgym.load_controller("car_racing").params)
>>> model.learn(1_000_000)
>>> save_policy_controller(model.policy, "runs/ppo_c", "car_racing")
```
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from torch import nn

from dreamgym._deps import require
from dreamgym._io import METRICS_FILE, log_metrics
from dreamgym.controller import ControllerConfig, unflatten
from dreamgym.dream import DreamVectorEnv
from dreamgym.games import get_game
from dreamgym.policy import controller_outputs, save_controller
from dreamgym.rollouts import DreamEvaluator

require("stable_baselines3", "sb3")
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.policies import ActorCriticPolicy  # noqa: E402
from stable_baselines3.common.vec_env import VecEnv  # noqa: E402

ACTIONS = ("env", "controller")


class DreamSB3VecEnv(VecEnv):
    """A ``DreamVectorEnv`` as an SB3 ``VecEnv`` (see ``as_vec_env``)."""

    def __init__(self, env: DreamVectorEnv, actions: str = "env", outputs: int = 0):
        if actions not in ACTIONS:
            raise ValueError(f"actions: expected one of {ACTIONS}, got {actions!r}")
        self.env = env
        self.num_envs = env.num_envs  # read by get_attr during VecEnv.__init__
        env.autoreset_mode = AutoresetMode.SAME_STEP
        self._actions: np.ndarray | None = None
        space = env.single_action_space
        self._to_action = None
        game = get_game(env.game)
        if actions == "controller" and not game.discrete:  # C's tanh space; the game maps it
            space = spaces.Box(-1.0, 1.0, (controller_outputs(game, outputs),), np.float32)
            self._to_action = game.controller_to_action
        super().__init__(env.num_envs, env.single_observation_space, space)

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
        actions = self._actions
        if self._to_action is not None:
            y = torch.from_numpy(np.clip(np.asarray(actions, np.float32), -1.0, 1.0))
            actions = self._to_action(y).numpy()
        obs, reward, terminated, truncated, infos = self.env.step(actions)
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


def as_vec_env(env: gym.vector.VectorEnv, actions: str = "env", outputs: int = 0) -> DreamSB3VecEnv:
    """An SB3 ``VecEnv`` over a ``DreamVectorEnv`` (e.g. from ``gym.make_vec``).

    The env is switched to ``AutoresetMode.SAME_STEP`` (SB3's convention) and
    reset by SB3 before its first step. Methods and attributes reach the batched
    env once (``env_method("set_tau", x)`` sets every dream's tau); ``indices``
    must name all the envs.

    ``actions="controller"``: the agent acts in the controller's tanh space,
    ``Box(-1, 1, (outputs,))`` (``outputs`` 0: the paper's number for the game),
    and the game maps its actions as it maps C's (``GameSpec.controller_to_action``);
    values outside [-1, 1] are clipped first. ``"env"`` (default): the dream's own
    action space. A discrete game's dream gives SB3 its ``Discrete(n)`` either way (C's
    n outputs are the logits whose argmax it plays).
    """
    native = env.unwrapped
    if not isinstance(native, DreamVectorEnv):
        raise TypeError(
            "env: expected a DreamVectorEnv (gym.make_vec(<dream id>, num_envs=N)), "
            f"got {type(native).__name__}"
        )
    return DreamSB3VecEnv(native, actions, outputs)


# ---------------------------------------------------------------- C as PPO's actor


class ControllerActorCritic(ActorCriticPolicy):
    """An SB3 actor-critic whose actor is a dreamgym controller.

    The action's mean is C's output, ``tanh(W x + b)`` (with ``hidden`` units,
    ``tanh(W tanh(W_h x + b_h) + b)``; ``bias=False`` drops every bias, as the
    paper's Doom C has none; ``reads=k``: its weights on all but the first k inputs
    stay at zero, e.g. k = z's size for the paper's C on z only), and a
    state-independent Gaussian explores around it;
    the value function is a separate tanh MLP (``value_net_arch``). Use it with
    ``as_vec_env(venv, actions="controller")``, whose actions are C's tanh outputs.
    ``controller_params``/``set_controller`` read and write the actor as C's flat
    parameter vector; ``save_policy_controller`` writes a controller folder.
    """

    def __init__(
        self,
        observation_space,
        action_space,
        lr_schedule,
        hidden: int = 0,
        bias: bool = True,
        value_net_arch: Sequence[int] = (64, 64),
        reads: int | None = None,
        **kwargs,
    ):
        if not (isinstance(hidden, int) and hidden >= 0):
            raise ValueError(f"hidden: expected an integer >= 0, got {hidden!r}")
        n_in = int(np.prod(observation_space.shape))
        if reads is not None and not 1 <= reads <= n_in:
            raise ValueError(f"reads: expected an integer in [1, {n_in}] or None, got {reads!r}")
        self.reads = reads
        if "net_arch" in kwargs or "activation_fn" in kwargs:
            raise ValueError("net_arch/activation_fn: set by the controller; use hidden")
        self.hidden, self.bias = hidden, bool(bias)
        kwargs["net_arch"] = {"pi": [hidden] if hidden else [], "vf": list(value_net_arch)}
        super().__init__(
            observation_space, action_space, lr_schedule, activation_fn=nn.Tanh, **kwargs
        )

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        layers = [m for m in self.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
        if not self.bias:  # the same initial weights, without biases
            for old in [*layers, self.action_net]:
                new = nn.Linear(old.in_features, old.out_features, bias=False)
                new.weight.data.copy_(old.weight.data)
                if old is self.action_net:
                    self.action_net = new
                else:
                    i = list(self.mlp_extractor.policy_net).index(old)
                    self.mlp_extractor.policy_net[i] = new
        self.action_net = nn.Sequential(self.action_net, nn.Tanh())
        if self.reads is not None:  # the weights on inputs past ``reads`` stay at zero
            weight = self._layers()["hidden_weight" if self.hidden else "weight"]
            keep = torch.zeros_like(weight)
            keep[:, : self.reads] = 1.0
            self.register_buffer("reads_mask", keep, persistent=False)  # moves with .to()
            with torch.no_grad():
                weight.mul_(keep)
            weight.register_hook(lambda grad: grad * self.reads_mask)
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.pop("net_arch", None)
        data.pop("activation_fn", None)
        return data | {"hidden": self.hidden, "bias": self.bias, "reads": self.reads}

    @property
    def controller_config(self) -> ControllerConfig:
        out = self.action_net[0]
        in_dim = int(np.prod(self.observation_space.shape))
        return ControllerConfig(in_dim, out.out_features, self.bias, self.hidden)

    def _layers(self) -> dict[str, nn.Parameter]:
        """The actor's tensors under C's names (``ControllerConfig.shapes``)."""
        out = {}
        if self.hidden:
            h = self.mlp_extractor.policy_net[0]
            out["hidden_weight"] = h.weight
            if self.bias:
                out["hidden_bias"] = h.bias
        out["weight"] = self.action_net[0].weight
        if self.bias:
            out["bias"] = self.action_net[0].bias
        return out

    def controller_params(self) -> np.ndarray:
        """The actor as C's flat parameter vector (``Controller.get_flat`` order)."""
        layers = self._layers()
        names = self.controller_config.shapes()
        return torch.cat([layers[k].detach().reshape(-1).cpu() for k in names]).numpy()

    def set_controller(self, params) -> None:
        """Make the actor the controller with flat parameters ``params``."""
        cfg = self.controller_config
        params = torch.as_tensor(np.asarray(params, np.float32)).reshape(-1)
        if params.numel() != cfg.num_params:
            raise ValueError(
                f"params: the actor is a controller of {cfg.num_params} parameters "
                f"({cfg.hidden} hidden units, {cfg.out_dim} outputs), got {params.numel()} values"
            )
        tensors = unflatten(cfg, params)
        if self.reads is not None:
            first = tensors["hidden_weight" if self.hidden else "weight"]
            if first[:, self.reads :].any():
                raise ValueError(
                    f"params: this actor reads only its first {self.reads} inputs, but the "
                    "controller weighs the others"
                )
        layers = self._layers()
        with torch.no_grad():
            for name, value in tensors.items():
                layers[name].copy_(value.to(layers[name].device))


def set_controller(policy: ControllerActorCritic, params) -> None:
    """Make ``policy``'s actor the controller with flat parameters ``params``."""
    _check_policy(policy).set_controller(params)


def save_policy_controller(
    policy: ControllerActorCritic, folder, game: str, meta: dict | None = None
):
    """Write ``policy``'s actor as a controller folder (see ``dreamgym.policy``)."""
    policy = _check_policy(policy)
    cfg = policy.controller_config
    return save_controller(
        folder, policy.controller_params(), game, meta, hidden=cfg.hidden, outputs=cfg.out_dim
    )


class DreamCheckpoint(BaseCallback):
    """Scores the actor's C in the dream every ``every`` steps and keeps the best.

    Each check plays the deterministic controller in ``trials`` dreams of
    ``world_model`` at ``tau`` (``max_steps`` long, from ``starts``: ``"first"`` or
    ``"real"``), the same dreams every time (``seed``), as ``dreamgym evolve``
    scores its candidates: in every member's dreams of an ensemble, by the worst
    member's mean. The best so far is written to ``folder`` as a controller
    folder (``dream_score`` and ``timesteps`` in its ``controller.json``), so a
    killed run keeps its best C; each check is a row of ``folder/metrics.jsonl``.

    ``held_out``: other world models with the same V (``evolve.load_worlds``) whose
    dreams pick the best instead: each check also plays C in ``trials`` dreams of
    each, from its first frames to the game's episode length, C reading
    ``world_model``'s M as it does in the real game, and C is kept by the worst of
    those means (``held_out_score``). An exploit of the training dream's errors is
    paid there only as far as the other Ms share them.
    """

    def __init__(
        self,
        world_model,
        folder,
        every: int,
        trials: int = 256,
        tau: float = 1.0,
        max_steps: int | None = None,
        starts: str = "first",
        seed: int = 0,
        meta: dict | None = None,
        verbose: int = 1,
        held_out: Sequence = (),
    ):
        super().__init__(verbose)
        if every < 1 or trials < 1:
            raise ValueError(f"every, trials: expected integers >= 1, got {every}, {trials}")
        if starts == "real" and world_model.starts is None:
            raise ValueError("starts='real': this world model has no bank of real states")
        self.wm, self.folder, self.every, self.trials = world_model, Path(folder), every, trials
        self.seed, self.meta = seed, dict(meta or {})
        self.evaluator = DreamEvaluator(
            world_model, tau, max_steps, starts=world_model.starts if starts == "real" else None
        )
        self.held_out = (
            DreamEvaluator(world_model, tau, worlds=held_out, members=None) if held_out else None
        )
        self.best = -np.inf
        self._next, self._checked = 0, -1

    def _on_training_start(self) -> None:
        self._checked = -1
        self._next = self.num_timesteps  # the C training starts from is scored first

    def _on_rollout_start(self) -> None:  # between PPO's updates: the C that will act next
        if self.num_timesteps >= self._next:
            self.check()
            self._next = self.num_timesteps + self.every

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self._checked != self.num_timesteps:
            self.check()

    def check(self) -> float:
        """Score the actor now; returns the score C is kept by (its mean dream return,
        in an ensemble its worst member's, or its held-out score)."""
        policy = _check_policy(self.model.policy)
        self.evaluator.controller = policy.controller_config
        returns = self.evaluator.returns(policy.controller_params()[None], self.trials, self.seed)
        score = float(self.evaluator.fitness(returns)[0])  # an ensemble: its worst member's mean
        self._checked = self.num_timesteps
        row = {"timesteps": int(self.num_timesteps), "dream_score": score}
        row["dream_std"] = float(returns.std())
        means = self.evaluator.model_means(returns)[0]
        if len(means) > 1:  # an ensemble: each member's mean, the score their minimum
            row["member_scores"] = [float(m) for m in means]
        if self.held_out is not None:
            self.held_out.controller = policy.controller_config
            held = self.held_out.returns(policy.controller_params()[None], self.trials, self.seed)
            row["held_out_score"] = float(self.held_out.fitness(held)[0])
        choice = row.get("held_out_score", score)
        kept = choice > self.best
        if kept:
            self.best = choice
            meta = {**self.meta, **row, "tau": self.evaluator.tau, "trials": self.trials}
            save_policy_controller(policy, self.folder, self.wm.game.name, meta)
        self.folder.mkdir(parents=True, exist_ok=True)
        log_metrics(self.folder / METRICS_FILE, **row, kept=kept)
        if self.verbose:
            held = f", held out {row['held_out_score']:.1f}" if "held_out_score" in row else ""
            print(
                f"dream check at {row['timesteps']:,} steps: {score:.1f} +- {row['dream_std']:.1f}"
                f" over {self.trials} dreams{held}{' (best, saved)' if kept else ''}"
            )
        return choice


def _check_policy(policy) -> ControllerActorCritic:
    if not isinstance(policy, ControllerActorCritic):
        raise TypeError(
            f"policy: expected a ControllerActorCritic (PPO(ControllerActorCritic, ...).policy), "
            f"got {type(policy).__name__}"
        )
    return policy


__all__ = [
    "as_vec_env",
    "ControllerActorCritic",
    "DreamCheckpoint",
    "DreamSB3VecEnv",
    "save_policy_controller",
    "set_controller",
]
