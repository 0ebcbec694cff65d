"""How honest is the Doom dream? Fixed policies scored in the dream and in the real game.

    python benchmarks/dream_fidelity.py --world-model runs/doom/world_model [--tau 1.15]

A dream a controller can exploit shows up here first: a policy that survives far
longer in the dream than in the real game is what CMA-ES will find and learn.
Four policies that need no training: always left, always right, stand still, and
the paper's random policy (a uniform action held 1-10 frames). Each plays
``--dreams`` dreams (one batched ``DreamVectorEnv``) and ``--episodes`` real
episodes (seeds 0..episodes-1). Printed per policy: mean steps survived in each,
the share of dreams that reach the 2,100-step cap, and the ratio dream / real
(1.0 is a faithful dream; the paper's tau-1.15 dream made its controller's
survival look 0.84x the real one).
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import dreamgym  # noqa: F401 - registers the dream envs
from dreamgym.games import make_game
from dreamgym.train.policies import doom_random_policy

POLICIES = ("left", "right", "still", "random")


def action(policy: str, n: int, rng: np.random.Generator, holds: np.ndarray, held: np.ndarray):
    """(n, 1) actions of ``policy`` for n games; ``holds``/``held`` carry the random policy."""
    if policy != "random":
        return np.full((n, 1), {"left": -1.0, "right": 1.0, "still": 0.0}[policy], np.float32)
    new = holds <= 0
    held[new] = rng.uniform(-1, 1, (int(new.sum()), 1))
    holds[new] = rng.integers(1, 11, int(new.sum()))
    holds -= 1
    return held.astype(np.float32)


def dream_lengths(world_model: str, policy: str, tau: float, n: int, seed: int) -> np.ndarray:
    """Steps survived by the first episode of each of n dreams."""
    venv = gym.make_vec("DreamDoom-v0", num_envs=n, world_model=world_model, tau=tau)
    rng = np.random.default_rng(seed)
    holds, held = np.zeros(n, int), np.zeros((n, 1))
    venv.reset(seed=seed)
    lengths = np.zeros(n, int)
    alive = np.ones(n, bool)
    while alive.any():
        _, _, term, trunc, _ = venv.step(action(policy, n, rng, holds, held))
        lengths += alive
        alive &= ~(term | trunc)
    venv.close()
    return lengths


def real_lengths(policy: str, episodes: int) -> np.ndarray:
    env = make_game("doom_take_cover")
    out = []
    for i in range(episodes):
        rng = np.random.default_rng(i)
        act = doom_random_policy(rng, max_hold=10) if policy == "random" else None
        obs, _ = env.reset(seed=i)
        t, done = 0, False
        while not done:
            a = act(obs) if act else action(policy, 1, rng, np.zeros(1), np.zeros((1, 1)))[0]
            obs, _, term, trunc, _ = env.step(a)
            t, done = t + 1, term or trunc
        out.append(t)
    env.close()
    return np.array(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-model", default=None, help="world-model folder (default: shipped)")
    p.add_argument("--tau", type=float, default=1.15)
    p.add_argument("--dreams", type=int, default=256)
    p.add_argument("--episodes", type=int, default=10, help="real episodes per policy")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"steps survived, dream (tau {args.tau:g}, {args.dreams} dreams) vs real "
          f"({args.episodes} episodes)")  # fmt: skip
    print(f"{'policy':<8} {'dream':>14} {'at cap':>7} {'real':>14} {'dream/real':>11}")
    for policy in POLICIES:
        d = dream_lengths(args.world_model, policy, args.tau, args.dreams, seed=0)
        r = real_lengths(policy, args.episodes)
        ratio = d.mean() / r.mean()
        print(f"{policy:<8} {d.mean():7.0f} ± {d.std():4.0f} {np.mean(d >= 2100):6.0%} "
              f"{r.mean():7.0f} ± {r.std():4.0f} {ratio:10.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
