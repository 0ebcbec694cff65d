"""Does M's reward head know what a drive is worth? Predicted vs real CarRacing returns.

    python benchmarks/reward_fidelity.py --world-model models/car_racing \\
        [--controller models/car_racing] [--episodes 40] [--dreams 16] [--out report.json]

Real episodes are played on held-out tracks (seeds 10,000 + i): half by the
collection policy (a noisy track follower with per-episode gain, speed and noise,
so returns spread widely), half by ``--controller`` with action noise (without
one, all by the collection policy). The real return of each episode is set
against what M predicts for the same action sequence, two ways:

- **teacher-forced**: M reads the real latents (V's means) and the real actions
  and its reward head's predictions are summed: the reward head alone;
- **dream**: from V's encoding of the real first frame, the dream replays the
  same actions open loop (``--dreams`` samples at ``--tau``), summing the predicted
  rewards until M's done or the sequence's end: what CMA-ES sees.

Printed: Pearson's r (and Spearman's) between real and predicted returns, and
the mean of each. A reward head a controller can exploit shows up as a low r.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from dreamgym import dream_core as dc
from dreamgym.policy import load_controller
from dreamgym.shipped import load_world_model
from dreamgym.train.policies import car_track_policy, noisy_controller
from dreamgym.vae import frames_to_tensor
from dreamgym.wrappers import make_real

SEED0 = 10_000


def play(env, controller, seed: int, noise: float) -> dict:
    """One real episode (``controller`` None: the collection policy), with its first frame,
    every action and the real return."""
    rng = np.random.default_rng(seed)
    if controller is None:
        follower = car_track_policy(rng)
        policy = lambda obs: follower(env.frame)  # noqa: E731 - it reads the real frame
    else:
        policy = noisy_controller(controller, env.world_model.game, rng, noise)
    obs, _ = env.reset(seed=seed)
    frames, actions, ret, done = [env.frame], [], 0.0, False
    while not done:
        a = policy(obs)
        obs, r, term, trunc, _ = env.step(a)
        frames.append(env.frame)
        actions.append(a)
        ret += r
        done = term or trunc
    return {"frames": np.stack(frames), "actions": np.stack(actions), "real": ret}


@torch.no_grad()
def teacher_forced(wm, ep: dict) -> float:
    """Sum of M's predicted rewards along the real latents and actions."""
    mu, _ = wm.vae.encode(frames_to_tensor(ep["frames"][:-1], wm.device))
    a = torch.as_tensor(wm.game.executed_action(ep["actions"]), dtype=torch.float32)
    state, total = wm.mdnrnn.initial_state(1, wm.device), 0.0
    for t in range(len(a)):
        state, out = wm.mdnrnn.step(state, mu[t : t + 1], a[t : t + 1])
        total += float(out.reward[0])
    return total


@torch.no_grad()
def dreamed(wm, ep: dict, n: int, tau: float, seed: int) -> np.ndarray:
    """n open-loop dreams of the episode's actions from its first frame: predicted returns."""
    g = torch.Generator().manual_seed(seed)
    mu, logvar = wm.vae.encode(frames_to_tensor(ep["frames"][:1], wm.device))
    eps = torch.randn((n, mu.shape[1]), generator=g)
    z = (mu + torch.exp(0.5 * logvar) * eps).clamp_(-dc.Z_BOUND, dc.Z_BOUND)
    state = dc.DreamState(z, wm.mdnrnn.initial_state(n, wm.device))
    alive, total = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.float64)
    for a in torch.as_tensor(ep["actions"]):
        state, r, term = dc.step(wm, state, a.expand(n, -1), tau, g)
        total += torch.where(alive, r, 0).double()
        alive &= ~term
        if not alive.any():
            break
    return total.numpy()


def rank(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--world-model", default=None, help="folder (default: the shipped one)")
    p.add_argument("--controller", default=None, help="controller folder for half the episodes")
    p.add_argument("--noise", type=float, default=0.1, help="action noise on the controller")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--dreams", type=int, default=16, help="open-loop dreams per episode")
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--out", default=None, help="write the per-episode numbers here (JSON)")
    args = p.parse_args()
    torch.set_num_threads(1)
    wm = load_world_model("car_racing", args.world_model, "cpu")
    controller = load_controller(args.controller) if args.controller else None
    env = make_real("DreamCarRacing-v0", world_model=wm)
    rows = []
    for i in range(args.episodes):
        name = "controller" if controller is not None and i % 2 else "collection"
        ep = play(env, controller if name == "controller" else None, SEED0 + i, args.noise)
        d = dreamed(wm, ep, args.dreams, args.tau, seed=i)
        row = {"seed": SEED0 + i, "policy": name, "steps": len(ep["actions"]),
               "real": ep["real"], "teacher_forced": teacher_forced(wm, ep),
               "dream": float(d.mean()), "dream_std": float(d.std())}  # fmt: skip
        rows.append(row)
        print(f"{i:3d} {name:10s} steps {row['steps']:4d}  real {row['real']:7.1f}  "
              f"teacher-forced {row['teacher_forced']:7.1f}  "
              f"dream {row['dream']:7.1f} ± {row['dream_std']:.1f}", flush=True)  # fmt: skip
    real = np.array([r["real"] for r in rows])
    summary = {"episodes": len(rows), "dreams_per_episode": args.dreams, "tau": args.tau,
               "real_mean": float(real.mean())}  # fmt: skip
    for key in ("teacher_forced", "dream"):
        pred = np.array([r[key] for r in rows])
        summary[key] = {
            "pearson_r": float(np.corrcoef(real, pred)[0, 1]),
            "spearman_r": float(np.corrcoef(rank(real), rank(pred))[0, 1]),
            "mean": float(pred.mean()),
        }
        print(f"{key:15s} Pearson r {summary[key]['pearson_r']:.3f}  Spearman r "
              f"{summary[key]['spearman_r']:.3f}  mean predicted {pred.mean():7.1f}  "
              f"(real {real.mean():7.1f}, {len(rows)} episodes)")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "episodes": rows}, f, indent=1)
    env.close()


if __name__ == "__main__":
    main()
