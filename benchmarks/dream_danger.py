"""How much of Doom's danger survives V and M: fireballs in real frames, in V's
reconstructions of the same frames, and in dreams, under the same policy.

"Danger pixels" are the game's ``danger_pixels`` (``dreamgym.games.doom_fireballs``: a
fireball in a 64x64 TakeCover frame is a few bright yellow-white pixels). A dream with
fewer of them per frame than the real game is an easier game.

    python benchmarks/dream_danger.py --world-model models/doom_take_cover
    python benchmarks/dream_danger.py --world-model DIR --controller DIR --episodes 20

Prints, for real frames, V's reconstructions of them, and the dream: the mean danger
pixels per frame, the share of frames with any, and the mean episode length.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import dreamgym
from dreamgym.games import doom_fireballs
from dreamgym.shipped import load_world_model
from dreamgym.vae import frames_to_tensor, tensor_to_frames
from dreamgym.world_model import WorldModel


def danger_pixels(frames: np.ndarray) -> np.ndarray:
    """(N, 64, 64, 3) uint8 -> (N,) number of fireball pixels in each frame."""
    return doom_fireballs(frames).reshape(len(frames), -1).sum(axis=1)


class HoldPolicy:
    """The paper's random policy, batched: a uniform action in [-1, 1] held 1-10 frames."""

    def __init__(self, n: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.action = np.zeros((n, 1), np.float32)
        self.left = np.zeros(n, np.int64)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        new = self.left <= 0
        k = int(new.sum())
        self.action[new, 0] = self.rng.uniform(-1, 1, k)
        self.left[new] = self.rng.integers(1, 11, k)
        self.left -= 1
        return self.action.copy()


def make_policy(controller: str | None, n: int, seed: int):
    if controller is None:
        return HoldPolicy(n, seed)
    return dreamgym.load_controller(controller)


@torch.no_grad()
def reconstruct(wm: WorldModel, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """V's reconstruction (decoding of the posterior mean) of every frame."""
    out = []
    for i in range(0, len(frames), batch):
        mu, _ = wm.vae.encode(frames_to_tensor(frames[i : i + batch], wm.device))
        out.append(tensor_to_frames(wm.vae.decode(mu)))
    return np.concatenate(out)


def real_frames(wm: WorldModel, controller, episodes: int, seed: int):
    """Every frame of ``episodes`` real episodes (game seeds seed, seed + 1, ...), and
    their lengths."""
    env = dreamgym.make_real("DreamDoom-v0", world_model=wm)
    frames, lengths = [], []
    for e in range(episodes):
        policy = make_policy(controller, 1, seed + e)
        obs, _ = env.reset(seed=seed + e)
        ep = [env.frame]
        done = False
        while not done:
            obs, _, term, trunc, _ = env.step(np.asarray(policy(obs[None]))[0])
            ep.append(env.frame)
            done = term or trunc
        frames.append(np.stack(ep))
        lengths.append(len(ep) - 1)
    env.close()
    return np.concatenate(frames), np.array(lengths)


def dream_frames(
    wm: WorldModel, controller, dreams: int, tau: float, seed: int, dropout: float | None = None
):
    """Every frame of ``dreams`` dreams up to each one's end, and their lengths."""
    venv = gym.make_vec(
        "DreamDoom-v0", num_envs=dreams, world_model=wm, tau=tau, render_mode="rgb_array",
        autoreset_mode="Disabled", dropout=dropout,
    )  # fmt: skip
    policy = make_policy(controller, dreams, seed)
    obs, _ = venv.reset(seed=seed)
    alive = np.ones(dreams, bool)
    lengths = np.zeros(dreams, np.int64)
    frames = [np.stack(venv.render())]
    while alive.any():
        action = np.asarray(policy(obs), np.float32).reshape(dreams, -1)
        obs, _, term, trunc, _ = venv.step(action)
        lengths += alive
        frames.append(np.stack(venv.render())[alive])
        ended = term | trunc
        alive &= ~ended
        if ended.any() and alive.any():  # restart ended rows so the batch steps on; not counted
            venv.reset(options={"reset_mask": ended})
    venv.close()
    return np.concatenate(frames), lengths


def summary(name: str, frames: np.ndarray, lengths: np.ndarray | None) -> str:
    d = danger_pixels(frames)
    length = "" if lengths is None else f"{lengths.mean():8.0f}"
    return f"{name:<22}{len(frames):>9,}{d.mean():>10.2f}{(d > 0).mean():>10.1%}{length:>10}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--world-model", default=None, help="world-model folder (default: shipped)")
    p.add_argument("--controller", default=None, help="controller folder (default: random holds)")
    p.add_argument("--episodes", type=int, default=20, help="real episodes (game seeds 0, 1, ...)")
    p.add_argument("--dreams", type=int, default=64)
    p.add_argument("--tau", type=float, default=1.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout", type=float, default=None, help="dream dropout (default: M's)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    wm = load_world_model("doom_take_cover", a.world_model)
    t0 = time.time()
    if a.episodes:
        real, real_len = real_frames(wm, a.controller, a.episodes, a.seed)
        recon = reconstruct(wm, real)
    dream, dream_len = dream_frames(wm, a.controller, a.dreams, a.tau, a.seed, a.dropout)
    print(
        f"world model {a.world_model or 'shipped'}, policy {a.controller or 'random holds'}, "
        f"tau {a.tau}, {a.episodes} real episodes, {a.dreams} dreams, {time.time() - t0:.0f} s"
    )
    print(f"{'frames of':<22}{'frames':>9}{'px/frame':>10}{'with any':>10}{'ep. len':>10}")
    if a.episodes:
        print(summary("real game", real, real_len))
        print(summary("V's reconstruction", recon, None))
    print(summary(f"dream (tau {a.tau})", dream, dream_len))


if __name__ == "__main__":
    main()
