"""Quickstart: a dream, a batch of dreams, the real game, and the shipped controller.

python examples/quickstart.py                      # the shipped Doom weights
python examples/quickstart.py --world-model DIR    # any world-model folder
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import dreamgym


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world-model", default=None, help="world-model folder (default: shipped)")
    args = p.parse_args()
    kw = {} if args.world_model is None else {"world_model": args.world_model}

    env = gym.make("DreamDoom-v0", tau=1.15, **kw)
    obs, _ = env.reset(seed=0)
    total, done = 0.0, False
    while not done:  # one dream episode with random actions
        obs, r, term, trunc, _ = env.step(env.action_space.sample())
        total, done = total + r, term or trunc
    print(f"one dream episode, random actions: return {total:.0f}; obs {obs.shape} {obs.dtype}")

    venv = gym.make_vec("DreamDoom-v0", num_envs=256, **kw)
    obs, _ = venv.reset(seed=0)
    for _ in range(100):
        obs, r, term, trunc, info = venv.step(venv.action_space.sample())
    print(f"256 dreams stepped together: obs {obs.shape}, {int(term.sum())} ended on the last step")

    real = dreamgym.make_real("DreamDoom-v0", **kw)
    assert real.observation_space == env.observation_space and real.action_space == env.action_space
    if args.world_model is None:
        policy = dreamgym.load_controller("doom_take_cover")
    else:

        def policy(o):
            return np.zeros(1, np.float32)

    obs, _ = real.reset(seed=0)
    total, done = 0.0, False
    while not done:  # the same kind of observation drives the real game
        obs, r, term, trunc, _ = real.step(policy(obs))
        total, done = total + r, term or trunc
    print(f"one real VizDoom episode: return {total:.0f}")


if __name__ == "__main__":
    main()
