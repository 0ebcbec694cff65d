"""What a stock agent needs to see in the Doom dream: PPO on parts of [z, c, h], scored for real.

    python benchmarks/doom_inputs.py --keep z --timesteps 8000000 --out runs/inputs_z
    python benchmarks/doom_inputs.py --keep z --stack 4 --timesteps 8000000 --out runs/inputs_z4
    python benchmarks/doom_inputs.py --keep zh --seed 1 --real-seed 1000 --out runs/inputs_zh

SB3's PPO with the Doom recipe of ``examples/sb3_ppo_dream.py`` (``MlpPolicy``, 32 dreams
x 64 steps, minibatch 512, 4 epochs, entropy bonus 0.01, initial log std 0) trains in
``DreamDoom-v0`` seeing only ``--keep`` of the observation: ``z`` (V's code of the
frame: what one frame holds, as a pixel agent sees it), ``zh``, ``h``, ``ch`` or the
whole ``zch``; ``--stack K`` gives it the last K of those (SB3's ``VecFrameStack``,
zeros before the first frame). Every 1M steps it prints the last 100 dreams' score and
saves the agent (``OUT_<n>M.zip``). The real game (``make_real``) is then seen the same
way, episode i on seed ``--real-seed`` + i; the dream and real scores go to ``OUT.json``.
Measured in docs/agents.md ("What one frame holds").
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnvWrapper, VecFrameStack

import dreamgym
from dreamgym.reports import summary
from dreamgym.sb3 import as_vec_env

Z, H = 64, 512  # Doom's observation: [z (64), c (512), h (512)]
KEEP = {
    "z": np.r_[0:Z],
    "zh": np.r_[0:Z, Z + H : Z + 2 * H],
    "h": np.r_[Z + H : Z + 2 * H],
    "ch": np.r_[Z : Z + 2 * H],
    "zch": np.r_[0 : Z + 2 * H],
}


class Keep(VecEnvWrapper):
    """The dreams' observations cut to the columns ``idx`` (terminal observations too)."""

    def __init__(self, venv, idx: np.ndarray):
        self.idx = idx
        space = gym.spaces.Box(-np.inf, np.inf, (len(idx),), np.float32)
        super().__init__(venv, observation_space=space)

    def reset(self):
        return self.venv.reset()[:, self.idx]

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = info["terminal_observation"][self.idx]
        return obs[:, self.idx], rewards, dones, infos


class Curve(BaseCallback):
    """Every 1M steps: the last 100 dreams' score, and the agent saved as ``OUT_<n>M.zip``."""

    def __init__(self, out: str):
        super().__init__()
        self.out, self.start, self.next = out, time.perf_counter(), 1_000_000

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next:
            returns = [ep["r"] for ep in self.model.ep_info_buffer]
            minutes = (time.perf_counter() - self.start) / 60
            score = f"{np.mean(returns):.0f} +- {np.std(returns):.0f}"
            print(f"{self.num_timesteps:,} steps ({minutes:.1f} min): last {len(returns)} "
                  f"dreams {score}", flush=True)  # fmt: skip
            self.model.save(f"{self.out}_{self.next // 1_000_000}M.zip")
            self.next += 1_000_000
        return True


def play_real(model, idx: np.ndarray, stack: int, episodes: int, seed: int) -> list[float]:
    """Real episodes seen as in training: the columns ``idx`` of the last ``stack`` steps."""
    real = dreamgym.make_real("DreamDoom-v0")
    returns = []
    for i in range(episodes):
        obs, _ = real.reset(seed=seed + i)
        zeros = np.zeros(len(idx), np.float32)
        seen = deque([zeros] * (stack - 1) + [obs[idx]], maxlen=stack)  # as VecFrameStack
        total, done = 0.0, False
        while not done:
            action = model.predict(np.concatenate(seen), deterministic=True)[0]
            obs, reward, terminated, truncated, _ = real.step(action)
            seen.append(obs[idx])
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    real.close()
    return returns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", default="z", choices=sorted(KEEP), help="what the agent sees")
    p.add_argument("--stack", type=int, default=1, help="the last K observations (1: one)")
    p.add_argument("--timesteps", type=int, default=2_000_000)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--episodes", type=int, default=100, help="real episodes")
    p.add_argument("--real-seed", type=int, default=0, help="seed of the first real episode")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="path prefix of the agents and the report")
    args = p.parse_args()
    if args.stack < 1 or args.timesteps < 1 or args.episodes < 0:
        p.error("--stack and --timesteps must be at least 1, --episodes at least 0")
    torch.set_num_threads(args.threads)
    idx = KEEP[args.keep]
    venv = Keep(as_vec_env(gym.make_vec("DreamDoom-v0", num_envs=32)), idx)
    if args.stack > 1:
        venv = VecFrameStack(venv, args.stack)
    model = PPO(
        "MlpPolicy", venv, n_steps=64, batch_size=512, n_epochs=4, ent_coef=0.01,
        policy_kwargs={"log_std_init": 0.0}, seed=args.seed, device="cpu", verbose=0,
    )  # fmt: skip
    start = time.perf_counter()
    model.learn(args.timesteps, callback=Curve(args.out))
    minutes = (time.perf_counter() - start) / 60
    dream = [float(ep["r"]) for ep in model.ep_info_buffer]
    print(f"{args.timesteps:,} steps in {minutes:.1f} min; last {len(dream)} dreams "
          f"{np.mean(dream):.0f} +- {np.std(dream):.0f}", flush=True)  # fmt: skip
    model.save(f"{args.out}.zip")
    returns = play_real(model, idx, args.stack, args.episodes, args.real_seed)
    report = {"keep": args.keep, "stack": args.stack, "timesteps": args.timesteps,
              "seed": args.seed, "minutes": minutes, "dream_last": dream,
              "real_seeds": [args.real_seed, args.real_seed + args.episodes - 1],
              "real": summary(returns) if returns else None}  # fmt: skip
    if returns:
        s = report["real"]
        print(f"real, seeds {args.real_seed}-{args.real_seed + args.episodes - 1}: "
              f"{s['mean']:.0f} +- {s['std']:.0f}")  # fmt: skip
    with open(f"{args.out}.json", "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
