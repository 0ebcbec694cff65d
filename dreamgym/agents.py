"""Saved agents as policies: Stable-Baselines3 zips loaded without unpickling, and controllers.

``load_agent(path, observation_space, action_space)`` returns an ``Agent``,
``agent(obs) -> action`` for one observation or a batch. ``path`` is a controller
folder (``dreamgym.load_controller``; safetensors + JSON) or an SB3 zip, as
``model.save("agent.zip")`` writes it:

- ``data``: JSON of the algorithm's attributes. What JSON cannot hold (the policy
  class, the spaces, schedules, A2C's optimizer class, ...) is a cloudpickle in
  base64 under ``":serialized:"``, beside a JSON description of the object's
  first-level attributes (as values, or as ``str()`` of them);
- ``policy.pth``: the policy's ``state_dict``, a torch file of tensors;
- the optimizers' states and ``pytorch_variables.pth``, which acting does not need.

The safe path never unpickles anything in the file. It reads ``data`` with
``json.loads``; the algorithm from the attributes only it has (``clip_range``:
PPO, ``policy_delay``: TD3, ``target_entropy``: SAC, ``gae_lambda``: A2C) unless
``algo`` is given; the policy class from the description of the pickled class
(its ``__module__`` and the class whose ``__init__`` it lists), which must be one
of SB3's own ``MlpPolicy``/``CnnPolicy`` of that algorithm; the policy's keyword
arguments from ``policy_kwargs`` (JSON values as they are; an activation function
or features extractor named by its class path, from ``torch.nn`` or SB3's
``torch_layers`` only; the optimizer, used only in training, is left out). It
builds that policy on the env's spaces, after checking them against the saved
spaces' shapes, dtypes and action bounds (an image space saved channels-first, as
SB3 transposes it, is matched to the env's 64x64x3 frames), and loads
``policy.pth`` into it with ``torch.load(..., weights_only=True)``, strictly: every
tensor must fit. An agent it cannot rebuild is refused with a one-line error that
names ``trust=True``; ``trust=True`` hands the file to SB3's ``ALGO.load``, which
unpickles it, so only for files you trust.
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from dreamgym._deps import require

ALGOS = ("ppo", "a2c", "sac", "td3")
"""The SB3 algorithms ``load_agent`` knows."""

_MARKS = {"clip_range": "ppo", "policy_delay": "td3", "target_entropy": "sac", "gae_lambda": "a2c"}
_COMMON, _SAC, _TD3 = (f"stable_baselines3.{m}.policies" for m in ("common", "sac", "td3"))
_POLICIES = {  # (module, class) of the saved policy class -> SB3's alias for it
    "ppo": {
        (_COMMON, "ActorCriticPolicy"): "MlpPolicy", (_COMMON, "ActorCriticCnnPolicy"): "CnnPolicy",
    },
    "sac": {(_SAC, "SACPolicy"): "MlpPolicy", (_SAC, "CnnPolicy"): "CnnPolicy"},
    "td3": {(_TD3, "TD3Policy"): "MlpPolicy", (_TD3, "CnnPolicy"): "CnnPolicy"},
}  # fmt: skip
_POLICIES["a2c"] = _POLICIES["ppo"]
_CLASS_MODULES = ("torch.nn.modules.activation", "stable_baselines3.common.torch_layers")
_TRAINING_ONLY = ("optimizer_class", "optimizer_kwargs")
_CLASS = re.compile(r"<class '([\w.]+)\.(\w+)'>")


class AgentError(ValueError):
    """A saved agent that cannot be loaded, or does not fit the env it is to play."""


class Agent:
    """A saved agent as a policy: ``agent(obs) -> action``, for one observation or a batch.

    ``source`` is the file or folder it came from, ``kind`` how it was loaded
    (``"controller"``, ``"sb3"``: rebuilt from its weights, ``"sb3-trusted"``:
    SB3's own load), ``algo`` its SB3 algorithm (None for a controller), and
    ``obs_mode`` what it observes (``"latent"`` or ``"pixels"``), ``info`` what its
    file records (a controller's ``controller.json``; an SB3 agent's ``num_timesteps``
    and ``learning_rate``, plain JSON values of its ``data``). SB3 agents act
    deterministically (``predict(obs, deterministic=True)``). An agent pickles as
    the call that loads it, so worker processes load it themselves.
    """

    batched = True
    """It takes a batch of observations as well as one."""

    def __init__(
        self,
        act: Callable[[np.ndarray], np.ndarray],
        source: Path,
        kind: str,
        algo: str | None,
        obs_mode: str,
        load_args: tuple,
    ):
        self._act = act
        self.source, self.kind, self.algo, self.obs_mode = source, kind, algo, obs_mode
        self.info: dict[str, Any] = {}
        self._load_args = load_args

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self._act(obs)

    def __reduce__(self):
        return load_agent, self._load_args

    def __repr__(self) -> str:
        return f"Agent({str(self.source)!r}, kind={self.kind!r}, algo={self.algo!r})"


def read_sb3_data(path: str | Path) -> dict[str, Any]:
    """The ``data`` JSON of an SB3 zip, read as JSON only (pickled entries stay text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise AgentError(
            f"{path}: not a Stable-Baselines3 agent (a zip with 'data' as JSON): {e}"
        ) from None
    if not isinstance(data, dict):
        raise AgentError(f"{path}: not a Stable-Baselines3 agent ('data' is not a JSON object)")
    return data


def read_sb3_tensors(path: str | Path, name: str, device: str | torch.device = "cpu") -> dict:
    """The state dict ``name`` (``policy.pth``, ``policy.optimizer.pth``) of an SB3 zip,
    read with ``torch.load(weights_only=True)``: tensors and plain containers only."""
    with zipfile.ZipFile(path) as archive:
        return torch.load(io.BytesIO(archive.read(name)), weights_only=True, map_location=device)


def algo_of(data: dict[str, Any], path: Path, algo: str | None = None) -> str:
    """The SB3 algorithm that saved ``data``; ``algo``, if given, must agree with it."""
    if algo is not None and algo not in ALGOS:
        raise AgentError(f"algo: expected one of {ALGOS}, got {algo!r}")
    found = next((name for mark, name in _MARKS.items() if mark in data), None)
    if found is None and algo is None:
        raise AgentError(f"{path}: cannot tell which SB3 algorithm saved it; pass algo {ALGOS}")
    if algo is not None and found is not None and found != algo:
        raise AgentError(f"{path}: holds a {found} agent, not {algo}")
    return algo or found


def saved_space(data: dict[str, Any], key: str, path: Path) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of a saved space, from the JSON description of the pickled space."""
    desc = data.get(key)
    shape = desc.get("_shape") if isinstance(desc, dict) else None
    if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
        raise AgentError(f"{path}: its {key} is not described as a Box; cannot check it")
    return tuple(shape), str(desc.get("dtype"))


def obs_mode_of(path: str | Path) -> str:
    """What a saved agent observes: ``"pixels"`` for image frames, else ``"latent"``."""
    path = Path(path)
    if path.is_dir():
        return "latent"  # a controller folder
    shape, dtype = saved_space(read_sb3_data(path), "observation_space", path)
    return "pixels" if len(shape) == 3 and dtype == "uint8" else "latent"


def _bounds(text: Any) -> np.ndarray | None:
    """A short 1-D bound as numpy prints it ('[-1.  0.  0.]'), or None when it is elided."""
    if not isinstance(text, str) or "..." in text:
        return None
    try:
        return np.array(text.strip().strip("[]").split(), np.float32)
    except ValueError:
        return None


def policy_space(
    path: Path, saved: tuple[tuple[int, ...], str], env_space: spaces.Box
) -> spaces.Box:
    """The observation space to build the policy on: the env's, or its channels-first twin."""
    shape, dtype = saved
    if shape == env_space.shape and dtype == str(env_space.dtype):
        return env_space
    if len(shape) == 3 and env_space.shape == (shape[1], shape[2], shape[0]) and dtype == "uint8":
        return spaces.Box(0, 255, shape, np.uint8)  # SB3 trained it on transposed frames
    raise AgentError(
        f"{path}: the agent observes shape {shape} ({dtype}), the env gives "
        f"{env_space.shape} ({env_space.dtype}); score it with the obs_mode and world "
        "model it was trained on"
    )


def check_actions(path: Path, shape, low, high, env_space: spaces.Box) -> None:
    """A one-line AgentError unless the agent's action box is the env's (for a discrete
    env: unless the agent's actions are single integers too)."""
    if isinstance(env_space, spaces.Discrete):
        if tuple(shape) != ():
            raise AgentError(
                f"{path}: the agent acts in shape {tuple(shape)}, the env in {env_space}"
            )
        return
    same = tuple(shape) == env_space.shape
    for saved, env in ((low, env_space.low), (high, env_space.high)):
        same = same and (saved is None or np.allclose(np.asarray(saved).reshape(-1), env))
    if not same:
        raise AgentError(
            f"{path}: the agent acts in a box of shape {tuple(shape)} (low {_list(low)}, high "
            f"{_list(high)}), the env in {env_space}"
        )


def _list(x) -> Any:
    return None if x is None else np.asarray(x).reshape(-1).tolist()


def _policy_kwargs(data: dict[str, Any], path: Path) -> dict[str, Any]:
    raw = data.get("policy_kwargs") or {}
    out = {}
    for key, value in raw.items():
        if key.startswith(":") or key in _TRAINING_ONLY:
            continue
        if isinstance(value, str) and value.startswith("<"):
            m = _CLASS.fullmatch(value)
            if m is None or m[1] not in _CLASS_MODULES:
                raise AgentError(
                    f"{path}: policy_kwargs[{key!r}] is {value}, which the loader does not "
                    "rebuild without unpickling; load it with trust=True (--trust-agent) "
                    "only if you trust the file"
                )
            value = getattr(importlib.import_module(m[1]), m[2])
        out[key] = value
    return out


def _policy_alias(data: dict[str, Any], algo: str, path: Path) -> str:
    desc = data.get("policy_class")
    desc = desc if isinstance(desc, dict) else {}
    m = re.match(r"<function (\w+)\.__init__ ", str(desc.get("__init__", "")))
    key = (desc.get("__module__"), m[1] if m else None)
    if key not in _POLICIES[algo]:
        raise AgentError(
            f"{path}: its policy class ({key[0]}.{key[1]}) is not SB3's MlpPolicy or CnnPolicy "
            f"of {algo}; load it with trust=True (--trust-agent) only if you trust the file"
        )
    return _POLICIES[algo][key]


def _rebuild(path: Path, data: dict, algo: str, obs_space: spaces.Box, act_space: spaces.Box):
    """SB3's policy of ``path`` from its JSON and ``policy.pth``, nothing unpickled."""
    require("stable_baselines3", "sb3")
    from stable_baselines3 import A2C, PPO, SAC, TD3

    cls = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3}[algo]
    policy_cls = cls.policy_aliases[_policy_alias(data, algo, path)]
    kwargs = _policy_kwargs(data, path)
    if algo in ("ppo", "a2c"):  # on-policy algorithms pass use_sde themselves
        kwargs["use_sde"] = bool(data.get("use_sde", False))
    try:
        state = read_sb3_tensors(path, "policy.pth")
        policy = policy_cls(obs_space, act_space, lambda _: 0.0, **kwargs)
        policy.load_state_dict(state)  # strict: every tensor must fit
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError, pickle.PickleError) as e:
        raise AgentError(
            f"{path}: cannot rebuild its {algo} policy from its weights ({_first_line(e)}); "
            "load it with trust=True (--trust-agent) only if you trust the file"
        ) from None
    policy.set_training_mode(False)
    return policy


def _first_line(e: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # without terminal colours
    return (text.splitlines() or [type(e).__name__])[0][:200]


def _load_trusted(path: Path, algo: str, obs_space: spaces.Box, act_space: spaces.Box):
    """SB3's own ``ALGO.load`` (it unpickles the file), then the same checks of its spaces."""
    require("stable_baselines3", "sb3")
    import stable_baselines3

    model = getattr(stable_baselines3, algo.upper()).load(path, device="cpu")
    obs = model.observation_space
    policy_space(path, (tuple(obs.shape), str(obs.dtype)), obs_space)
    act = model.action_space
    check_actions(path, act.shape, act.low, act.high, act_space)
    return model.policy


def load_agent(
    path: str | Path,
    observation_space: spaces.Box,
    action_space: spaces.Box,
    algo: str | None = None,
    trust: bool = False,
) -> Agent:
    """A saved agent that plays an env of these spaces: an SB3 zip or a controller folder.

    See the module's docstring for how SB3 zips load without unpickling; ``algo``
    (``ppo``, ``a2c``, ``sac``, ``td3``; None: read from the zip) and ``trust``
    (SB3's own load, which unpickles: only for files you trust) apply to zips.
    Raises ``FileNotFoundError`` for a missing file and ``AgentError`` (a
    ``ValueError``) for a file that is not an agent or does not fit the spaces.
    """
    path = Path(path)
    args = (path, observation_space, action_space, algo, trust)
    if path.is_dir():
        return _load_controller(path, observation_space, action_space, args)
    data = read_sb3_data(path)
    algo = algo_of(data, path, algo)
    obs_space = policy_space(path, saved_space(data, "observation_space", path), observation_space)
    shape, _ = saved_space(data, "action_space", path)
    desc = data["action_space"]
    check_actions(path, shape, _bounds(desc.get("low")), _bounds(desc.get("high")), action_space)
    if trust:
        policy, kind = _load_trusted(path, algo, observation_space, action_space), "sb3-trusted"
    else:
        policy, kind = _rebuild(path, data, algo, obs_space, action_space), "sb3"
    mode = "pixels" if len(obs_space.shape) == 3 else "latent"

    def act(obs):
        with torch.no_grad():
            return policy.predict(obs, deterministic=True)[0]

    agent = Agent(act, path, kind, algo, mode, args)
    for key in ("num_timesteps", "learning_rate"):
        if isinstance(data.get(key), (int, float)):
            agent.info[key] = data[key]
    return agent


def _load_controller(path: Path, observation_space, action_space, args) -> Agent:
    from dreamgym.policy import ControllerError, load_controller

    try:
        controller = load_controller(path)
    except ControllerError as e:
        raise AgentError(f"{path}: neither an SB3 zip nor a controller folder: {e}") from None
    if (controller.obs_dim,) != observation_space.shape:
        raise AgentError(
            f"{path}: the controller reads {controller.obs_dim} inputs, the env gives "
            f"{observation_space.shape}; score it with the world model it was trained in"
        )
    game = controller.game.action_space
    if isinstance(game, spaces.Discrete):
        if game != action_space:
            raise AgentError(f"{path}: the controller acts in {game}, the env in {action_space}")
    else:
        check_actions(path, game.shape, game.low, game.high, action_space)
    agent = Agent(controller, path, "controller", None, "latent", args)
    agent.info = dict(controller.info)
    return agent


__all__ = ["ALGOS", "Agent", "AgentError", "load_agent", "obs_mode_of", "read_sb3_data"]
