"""The ``ppo`` stage: PPO (Stable-Baselines3) trains the paper's C in the run's dream.

The actor is C itself (``dreamgym.sb3.ControllerActorCritic``: its deterministic
action is ``tanh(W [z, h] + b)``), so the result is an ordinary controller folder
that ``evaluate``, ``export`` and ``load_controller`` take. It can start from a
controller CMA-ES trained (``--init``): PPO then refines it with gradients, which
CMA-ES cannot afford for long. Every ``check_every`` steps the C is scored on the
same ``check_trials`` dreams, and the best so far is the stage's controller; with
``check_worlds``, dreams of other world models (held-out dreams) pick it. Only
dreams train and select it. The folder is ``ppo-<id>/`` (``folder_name``; ``out``
names another), with the config in ``ppo.json`` and a row per check in
``metrics.jsonl``.

A kill loses at most the steps since the last check: the checkpoint holds the actor,
the value net, the exploration noise, Adam's state and the step count, in
safetensors (no pickle), and a rerun continues from it (a continued run does not
repeat the dreams the uninterrupted one would have drawn).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import torch
from tqdm import tqdm

from dreamgym._io import METRICS_FILE
from dreamgym.policy import WEIGHTS_FILE as CONTROLLER_WEIGHTS
from dreamgym.policy import check_reads, read_controller
from dreamgym.spaces import check_tau
from dreamgym.train import provenance, search
from dreamgym.train.common import (
    module_state,
    module_tensors,
    optimizer_state,
    optimizer_tensors,
    save_checkpoint,
    set_threads,
)  # fmt: skip
from dreamgym.train.evolve import INPUTS, input_mask, load_worlds
from dreamgym.world_model import WEIGHTS_FILE as WM_WEIGHTS
from dreamgym.world_model import WorldModel

CHECKPOINT = "ppo.safetensors"
CONFIG_NAME = "ppo.json"
STARTS = ("first", "real")
RESUME_KEYS = (
    "init", "num_envs", "tau", "starts", "max_steps", "learning_rate", "log_std_init", "n_steps",
    "batch_size", "n_epochs", "gamma", "hidden", "outputs", "inputs", "check_trials", "seed",
    "check_worlds",
)  # fmt: skip
"""Config fields a resumed run must share with the run it continues."""


@dataclass
class PPOConfig:
    """Settings of the ``ppo`` stage: PPO (Stable-Baselines3) on C in the dream."""

    timesteps: int = 10_000_000
    """Total PPO steps in the dream (a rerun with more continues)."""
    init: str | None = None
    """A controller folder to start from (say, evolve's); None: a new C."""
    num_envs: int = 64
    """Dreams stepped as one batch."""
    tau: float = 1.0
    """Dream temperature."""
    starts: str = "first"
    """Where dreams start: real ``first`` frames, or ``real`` states from the world
    model's bank (``gym.make(..., starts="real")``); pair ``real`` with a short
    ``max_steps``, say 250."""
    max_steps: int | None = None
    """Dream length (None: the game's)."""
    learning_rate: float = 1e-4
    """Adam's step size, for the actor and the value net."""
    log_std_init: float = -1.5
    """Initial log standard deviation of the exploration noise on C's tanh outputs."""
    n_steps: int = 32
    """Steps of every dream between updates (``n_steps * num_envs`` transitions each)."""
    batch_size: int = 2048
    """Minibatch size of PPO's epochs."""
    n_epochs: int = 10
    """Passes over each batch of transitions."""
    gamma: float = 0.99
    """Discount factor."""
    hidden: int = 0
    """Units of a tanh hidden layer in a new C (0: the paper's linear C; with ``init``,
    the controller's own)."""
    outputs: int = 0
    """Tanh outputs of a new C (0: the paper's; with ``init``, the controller's own)."""
    inputs: str = "zh"
    """What C reads: ``zh`` (the game's full input) or ``z`` (V's latent only, the paper's
    ablation without M): its weights on M's state stay at zero."""
    check_every: int = 500_000
    """Steps between scores of the deterministic C (each one also checkpoints)."""
    check_trials: int = 256
    """Dreams per score: the same dreams every time."""
    check_worlds: tuple[str, ...] = ()
    """World-model folders with the run's V whose dreams pick C instead (held-out dreams):
    each check also plays C in ``check_trials`` of each one's first-frame dreams, C
    reading the run's M, and keeps C by the worst of those means."""
    seed: int = 0
    """Seed of PPO, and of the dreams it trains in."""
    device: str = "cpu"
    """Torch device of the dream and of PPO."""
    threads: int | None = None
    """Torch threads of this process (None: torch's default)."""
    seconds: float | None = None
    """Wall-time budget of this call: training stops at the first check past it (a rerun
    continues)."""
    out: str | None = None
    """The folder to write (None: ``ppo-<id>`` beside the run's world model, the id a hash
    of the settings that shape the controller, so the same command resumes it)."""


def _check(config: PPOConfig) -> None:
    for name in ("timesteps", "num_envs", "n_steps", "batch_size", "n_epochs"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {getattr(config, name)}")
    for name in ("check_every", "check_trials"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {getattr(config, name)}")
    if config.inputs not in INPUTS:
        raise ValueError(f"inputs: expected one of {INPUTS}, got {config.inputs!r}")
    if config.starts not in STARTS:
        raise ValueError(f"starts: expected one of {STARTS}, got {config.starts!r}")
    check_tau(config.tau)
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise ValueError(f"learning_rate: expected a positive number, got {config.learning_rate}")
    if not math.isfinite(config.log_std_init):
        raise ValueError(f"log_std_init: expected a finite number, got {config.log_std_init}")
    if not 0 < config.gamma <= 1:
        raise ValueError(f"gamma: expected a number in (0, 1], got {config.gamma}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"max_steps: expected an integer >= 1 or None, got {config.max_steps}")
    if config.seconds is not None and not (math.isfinite(config.seconds) and config.seconds > 0):
        raise ValueError(f"seconds: expected a positive number or None, got {config.seconds}")
    if config.hidden < 0 or config.outputs < 0:
        raise ValueError(f"hidden, outputs: expected integers >= 0, got {config.hidden}, "
                         f"{config.outputs}")  # fmt: skip


def run(config: PPOConfig, run_dir) -> Path:
    """Train C with PPO in the run's world model; return the folder holding it."""
    _check(config)
    wm_dir = provenance.run_world_model(run_dir)
    out = config.out or search.run_folder(wm_dir.parent, "ppo", config, RESUME_KEYS, CONFIG_NAME)
    return train(config, wm_dir, out)


def folder_name(config: PPOConfig) -> str:
    """``ppo-<id>``: the folder ``run`` writes, named by the settings that shape the
    controller (see ``search.run_id``)."""
    return search.folder_name("ppo", config, RESUME_KEYS)


# ---------------------------------------------------------------- the stage


def train(config: PPOConfig, wm_dir, out) -> Path:
    """Train C with PPO in the world model in ``wm_dir``, writing (and resuming) ``out``."""
    _check(config)
    set_threads(config.threads)
    wm_dir, out = Path(wm_dir), Path(out)
    wm = WorldModel.load(wm_dir, device=config.device)
    model = _model(config, wm)
    meta = {
        "trained_in": "dream", "trainer": "ppo", "tau": config.tau, "init": config.init,
        "starts": config.starts, "max_steps": config.max_steps, "seed": config.seed,
        "inputs": config.inputs,
    }  # fmt: skip
    held_out = load_worlds(wm, config.check_worlds, config.device, "check_worlds")
    checker = _checks(config, wm, out, meta, held_out)
    inputs = {"world_model": provenance.file_digest(wm_dir / WM_WEIGHTS)}
    for k, folder in enumerate(config.check_worlds):
        inputs[f"check_world{k}"] = provenance.file_digest(Path(folder) / WM_WEIGHTS)
    if config.init:  # a folder rewritten since (distill run again) is another start
        inputs["init"] = provenance.file_digest(Path(config.init) / CONTROLLER_WEIGHTS)
    checkpoint = search.resume(out, config, RESUME_KEYS, CHECKPOINT, "ppo", inputs)
    done = 0
    if checkpoint is not None:
        arrays, values = checkpoint
        model.policy.load_state_dict(module_state("policy", arrays))
        model.policy.optimizer.load_state_dict(optimizer_state(arrays, values))
        done = values["timesteps"]
        checker.resume(done, values["best"])
    search.begin(out, CONFIG_NAME, config, inputs, finished=done >= config.timesteps)
    # a kill after a check's row, before its checkpoint, left a row too many
    checked = done if checkpoint is not None else None
    search.repair_metrics(out / METRICS_FILE, "timesteps", checked)
    if done < config.timesteps:
        model.num_timesteps = done
        model.learn(config.timesteps - done, callback=checker, reset_num_timesteps=False)
    checker.bar.close()
    return out


def _model(config: PPOConfig, wm: WorldModel):
    """SB3's PPO with C as its actor: a new C, or ``config.init``'s."""
    from stable_baselines3 import PPO  # optional dependency: pip install 'dreamgym[sb3]'

    from dreamgym.sb3 import ControllerActorCritic, as_vec_env, set_controller

    init = read_controller(config.init, wm.game.name)[0] if config.init else None
    hidden = init.config.hidden if init else config.hidden
    outputs = init.config.out_dim if init else config.outputs
    dreams = gym.make_vec(
        wm.game.dream_id, num_envs=config.num_envs, world_model=wm, tau=config.tau,
        starts=config.starts, max_episode_steps=config.max_steps, device=config.device,
    )  # fmt: skip
    venv = as_vec_env(dreams, actions="controller", outputs=outputs)
    reads = wm.mdnrnn.config.z_dim if config.inputs == "z" else None
    if init is not None:
        check_reads(init, wm, "init", config.init)
    model = PPO(
        ControllerActorCritic, venv, learning_rate=config.learning_rate, n_steps=config.n_steps,
        batch_size=min(config.batch_size, config.n_steps * config.num_envs),
        n_epochs=config.n_epochs, gamma=config.gamma, seed=config.seed, device=config.device,
        policy_kwargs={"hidden": hidden, "bias": wm.game.controller_bias,
                       "log_std_init": config.log_std_init, "reads": reads},
    )  # fmt: skip
    if init is not None:
        if init.get_flat()[~torch.from_numpy(input_mask(wm, config.inputs, init.config))].any():
            raise ValueError(
                f"init: {config.init} reads h, but inputs={config.inputs!r} holds its weights on "
                "M's state at zero; start from a controller on z"
            )
        set_controller(model.policy, init.get_flat())
    return model


def _checks(config: PPOConfig, wm: WorldModel, out: Path, meta: dict, held_out=()):
    """A ``DreamCheckpoint`` that also checkpoints the run, shows progress and keeps the
    wall-time budget (defined here: SB3 is an optional dependency)."""
    from dreamgym.sb3 import DreamCheckpoint

    class Checks(DreamCheckpoint):
        def __init__(self):
            super().__init__(
                wm, out, config.check_every, config.check_trials, config.tau,
                config.max_steps, config.starts, 0, meta, verbose=0, held_out=held_out,
            )  # fmt: skip
            self.bar = tqdm(total=config.timesteps, desc=f"ppo tau={config.tau:g}",
                            unit="step", unit_scale=True)  # fmt: skip
            self.budget, self.resumed_at = search.Budget(config.seconds), 0

        def resume(self, done: int, best: float) -> None:
            self.resumed_at, self.best = done, best
            self._next = done + config.check_every
            self.bar.update(done)

        def _on_training_start(self) -> None:
            if self.resumed_at == 0:  # a fresh run scores the C it starts from
                super()._on_training_start()

        def _on_step(self) -> bool:
            self.bar.update(self.num_timesteps - self.bar.n)
            return not self.budget.over()

        def check(self) -> float:
            score = super().check()
            policy = self.model.policy
            arrays, values = optimizer_tensors(policy.optimizer.state_dict())
            arrays |= module_tensors("policy", policy.state_dict())
            values |= {"timesteps": int(self.num_timesteps), "best": self.best,
                       "config": asdict(config)}  # fmt: skip
            save_checkpoint(out / CHECKPOINT, arrays, values)
            postfix = {"held out" if held_out else "dream": f"{score:.1f}",
                       "best": f"{self.best:.1f}"}  # fmt: skip
            self.bar.set_postfix(postfix | ({"left": self.budget.left()} if config.seconds else {}))
            return score

    return Checks()


__all__ = ["PPOConfig", "run", "train", "folder_name"]
