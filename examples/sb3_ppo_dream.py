"""Train PPO (Stable-Baselines3) entirely inside a dream, then score it in the real game.

    pip install 'dreamgym[doom,carracing,sb3]'
    python examples/sb3_ppo_dream.py --timesteps 200000 --num-envs 64 --episodes 20
    python examples/sb3_ppo_dream.py --env DreamCarRacing-v0 --starts real \\
        --max-episode-steps 250 --timesteps 10000000 --episodes 100

The dreams step as one batched tensor computation (``gym.make_vec`` with the
native ``DreamVectorEnv``), wrapped for SB3 by ``dreamgym.sb3.as_vec_env``. The
trained policy then plays ``dreamgym.make_real(ENV)``, the real game seen through
the same V and M, so it runs unchanged. ``--starts real`` starts each dream from
a real state of a recorded drive (the CarRacing world model's bank).
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import dreamgym
from dreamgym.sb3 import as_vec_env

REAL = {
    "DreamDoom-v0": "real VizDoom (random policy ~210, solved: 750)",
    "DreamCarRacing-v0": "real CarRacing-v3 (solved: 900)",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="DreamDoom-v0", choices=sorted(REAL), help="dream id")
    p.add_argument(
        "--world-model", default=None, help="world-model folder (default: the shipped weights)"
    )
    p.add_argument("--timesteps", type=int, default=200_000, help="PPO steps in the dream")
    p.add_argument("--num-envs", type=int, default=64, help="dreams stepped as one batch")
    p.add_argument("--episodes", type=int, default=20, help="real episodes to score")
    p.add_argument("--tau", type=float, default=None, help="dream temperature (default: the id's)")
    p.add_argument("--starts", default="first", choices=["first", "real"], help="dream starts")
    p.add_argument(
        "--max-episode-steps", type=int, default=None, help="dream length (default: the game's)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def score_in_real_game(model, env_id, world_model, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` real-game episodes played by the policy, deterministically."""
    real = dreamgym.make_real(env_id, world_model=world_model)
    returns = []
    for episode in range(episodes):
        obs, _ = real.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = real.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        print(f"  real episode {episode + 1}/{episodes}: {total:.0f}")
    real.close()
    return returns


def main() -> None:
    args = parse_args()
    from stable_baselines3 import PPO  # optional dependency: pip install 'dreamgym[sb3]'

    kwargs = {"tau": args.tau} if args.tau is not None else {}
    if args.max_episode_steps is not None:
        kwargs["max_episode_steps"] = args.max_episode_steps
    dreams = gym.make_vec(
        args.env, num_envs=args.num_envs, world_model=args.world_model, starts=args.starts, **kwargs
    )
    venv = as_vec_env(dreams)
    n_steps = max(16, 2048 // args.num_envs)  # about 2048 transitions per update
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=n_steps,
        batch_size=min(2048, n_steps * args.num_envs),
        seed=args.seed,
        device="cpu",
        verbose=1,
    )
    model.learn(total_timesteps=args.timesteps)
    dream_returns = [ep["r"] for ep in model.ep_info_buffer]
    if dream_returns:
        print(
            f"dream (last {len(dream_returns)} episodes, tau {dreams.unwrapped.tau}): "
            f"{np.mean(dream_returns):.0f} +- {np.std(dream_returns):.0f}"
        )

    wm = dreams.unwrapped.world_model
    returns = score_in_real_game(model, args.env, wm, args.episodes, args.seed)
    print(
        f"{REAL[args.env]} over {len(returns)} episodes: "
        f"{np.mean(returns):.0f} +- {np.std(returns):.0f}"
    )


if __name__ == "__main__":
    main()
