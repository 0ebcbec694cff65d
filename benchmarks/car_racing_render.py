"""CarRacing steps/s: gymnasium's own CarRacing-v3 vs dreamgym's (same frames, numpy road).

    python benchmarks/car_racing_render.py [SECONDS]

Both envs play the same tracks with the same actions (the collection policy) on
one core, alternating in 4 rounds so that other load on the machine hits both
alike. Prints each one's steps/s and the ratio (ours / gymnasium's).
"""

from __future__ import annotations

import sys
import time

import gymnasium as gym
import numpy as np
import torch

from dreamgym.games import CarRacing64, make_car_racing
from dreamgym.train.policies import car_track_policy


def steps_per_second(env: gym.Env, seconds: float, seed: int) -> float:
    policy = car_track_policy(np.random.default_rng(seed))
    obs, _ = env.reset(seed=seed)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        obs, _, term, trunc, _ = env.step(policy(obs))
        steps += 1
        if term or trunc:
            obs, _ = env.reset(seed=seed + steps)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    torch.set_num_threads(1)
    theirs = CarRacing64(gym.make("CarRacing-v3", max_episode_steps=1000))
    ours = make_car_racing()
    rates = {"gymnasium": [], "dreamgym": []}
    for r in range(4):
        rates["gymnasium"].append(steps_per_second(theirs, seconds / 4, seed=r))
        rates["dreamgym"].append(steps_per_second(ours, seconds / 4, seed=r))
    a, b = np.mean(rates["gymnasium"]), np.mean(rates["dreamgym"])
    print(f"CarRacing-v3 steps/s on one core, 64x64 frames, collection policy: "
          f"gymnasium {a:.0f}, dreamgym {b:.0f}; ratio {b / a:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
