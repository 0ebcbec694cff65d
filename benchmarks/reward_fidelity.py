"""Does M's reward head know what a drive is worth? Predicted vs real CarRacing returns.

    python benchmarks/reward_fidelity.py --world-model models/car_racing \\
        [--controller models/car_racing] [--episodes 40] [--dreams 16] [--horizon 50] [--out F]

Real episodes are played on held-out tracks (seeds 10,000 + i): half by the
collection policy (a noisy track follower with per-episode gain, speed and noise,
so returns spread widely), half by ``--controller`` with action noise (without
one, all by the collection policy). The real return of each episode is set
against what M predicts for the same action sequence, two ways:

- **teacher-forced**: M reads the real latents (V's means) and the real actions
  and its reward head's predictions are summed: the reward head alone;
- **dreams from real states**: every ``--horizon`` steps of the episode, dreams
  (``--dreams`` samples at ``--tau``) start from the real state there (V's encoding
  of the frame, M's state after reading the real past) and replay the next
  ``--horizon`` real actions, summing the predicted rewards until M's done: what a
  dream started from a recorded state (``starts="real"``) pays, segment by
  segment, against what the game paid for the same steps.

Printed: Pearson's r (and Spearman's) between real and predicted returns (of the
episodes, teacher-forced; of the segments; of each episode's whole segments summed),
and the mean of each. A reward head a controller can
exploit shows up as a low r. (Replaying a whole episode's actions blind from its
first frame is not measured: the dream's road soon parts from the real one, so
the real actions no longer fit it.)
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from dreamgym import dream_core as dc
from dreamgym.mdnrnn import LSTMState
from dreamgym.policy import load_controller
from dreamgym.shipped import load_world_model
from dreamgym.train.policies import car_track_policy, noisy_controller
from dreamgym.vae import frames_to_tensor
from dreamgym.wrappers import make_real

SEED0 = 10_000


def play(env, controller, seed: int, noise: float) -> dict:
    """One real episode (``controller`` None: the collection policy): its frames, actions,
    rewards and return."""
    rng = np.random.default_rng(seed)
    if controller is None:
        follower = car_track_policy(rng)
        policy = lambda obs: follower(env.frame)  # noqa: E731 - it reads the real frame
    else:
        policy = noisy_controller(controller, env.world_model.game, rng, noise)
    obs, _ = env.reset(seed=seed)
    frames, actions, rewards, done = [env.frame], [], [], False
    while not done:
        a = policy(obs)
        obs, r, term, trunc, _ = env.step(a)
        frames.append(env.frame)
        actions.append(a)
        rewards.append(float(r))
        done = term or trunc
    return {"frames": np.stack(frames), "actions": np.stack(actions), "rewards": rewards,
            "real": sum(rewards)}  # fmt: skip


@torch.no_grad()
def teacher_forced(wm, ep: dict) -> np.ndarray:
    """M's predicted reward at each step, M reading the real latents and actions. (T,)"""
    mu, _ = wm.vae.encode(frames_to_tensor(ep["frames"][:-1], wm.device))
    a = torch.as_tensor(wm.game.executed_action(ep["actions"]), dtype=torch.float32)
    state, rewards = wm.mdnrnn.initial_state(1, wm.device), []
    for t in range(len(a)):
        state, out = wm.mdnrnn.step(state, mu[t : t + 1], a[t : t + 1])
        rewards.append(float(out.reward[0]))
    return np.array(rewards)


@torch.no_grad()
def from_real_states(wm, ep: dict, horizon: int, n: int, tau: float, seed: int):
    """(predicted, real) reward sums of the episode's whole ``horizon``-step segments: n
    dreams from the real state at each segment's start replay its real actions."""
    g = torch.Generator().manual_seed(seed)
    mu, logvar = wm.vae.encode(frames_to_tensor(ep["frames"][:-1], wm.device))
    actions = torch.as_tensor(ep["actions"], dtype=torch.float32)
    starts = np.arange(0, len(actions) - horizon + 1, horizon)
    if len(starts) == 0:
        return np.zeros(0), np.zeros(0)
    lstm, h, c = wm.mdnrnn.initial_state(1, wm.device), [], []
    for t in range(starts[-1] + 1):  # M reads the real past up to the last start
        if t % horizon == 0:
            h.append(lstm.h)
            c.append(lstm.c)
        lstm = dc.follow(wm, lstm, mu[t : t + 1], actions[t : t + 1])
    at = torch.as_tensor(starts).repeat_interleave(n)  # (S * n,) each start's n dreams
    z = dc.posterior_sample(mu[at], logvar[at], g).clamp_(-dc.Z_BOUND, dc.Z_BOUND)  # (S * n, Z)
    lstm = LSTMState(torch.cat(h).repeat_interleave(n, 0), torch.cat(c).repeat_interleave(n, 0))
    state = dc.DreamState(z, lstm)
    alive, total = torch.ones(len(at), dtype=torch.bool), torch.zeros(len(at), dtype=torch.float64)
    for k in range(horizon):
        state, r, term = dc.step(wm, state, actions[at + k], tau, g)
        total += torch.where(alive, r, 0).double()
        alive &= ~term
    real = np.array([sum(ep["rewards"][s : s + horizon]) for s in starts])
    return total.view(len(starts), n).mean(1).numpy(), real  # (S,) each: the n dreams' mean


def rank(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--world-model", default=None, help="folder (default: the shipped one)")
    p.add_argument("--controller", default=None, help="controller folder for half the episodes")
    p.add_argument("--noise", type=float, default=0.1, help="action noise on the controller")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--dreams", type=int, default=16, help="dreams from each real state")
    p.add_argument("--horizon", type=int, default=50, help="steps of each dream (a segment)")
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--out", default=None, help="write the per-episode numbers here (JSON)")
    args = p.parse_args()
    if args.horizon < 1:
        p.error(f"--horizon: expected at least 1 step, got {args.horizon}")
    torch.set_num_threads(1)
    wm = load_world_model("car_racing", args.world_model, "cpu")
    controller = load_controller(args.controller) if args.controller else None
    env = make_real("DreamCarRacing-v0", world_model=wm)
    rows, segments = [], []
    for i in range(args.episodes):
        name = "controller" if controller is not None and i % 2 else "collection"
        ep = play(env, controller if name == "controller" else None, SEED0 + i, args.noise)
        pred, real = from_real_states(wm, ep, args.horizon, args.dreams, args.tau, seed=i)
        segments += [{"seed": SEED0 + i, "start": k * args.horizon, "real": float(r),
                      "dream": float(d)}
                     for k, (d, r) in enumerate(zip(pred, real, strict=True))]  # fmt: skip
        row = {"seed": SEED0 + i, "policy": name, "steps": len(ep["actions"]),
               "real": ep["real"], "teacher_forced": float(teacher_forced(wm, ep).sum()),
               "segments_real": float(real.sum()), "segments_dream": float(pred.sum())}  # fmt: skip
        rows.append(row)
        print(f"{i:3d} {name:10s} steps {row['steps']:4d}  real {row['real']:7.1f}  "
              f"teacher-forced {row['teacher_forced']:7.1f}  segments: real "
              f"{real.sum():7.1f}, dreamed {pred.sum():7.1f}", flush=True)  # fmt: skip
    summary = {"episodes": len(rows), "dreams_per_state": args.dreams, "tau": args.tau,
               "horizon": args.horizon}  # fmt: skip
    for key, group, truth, what in (
        ("teacher_forced", rows, "real", "episodes"),
        ("dream", segments, "real", f"{args.horizon}-step segments"),
        ("segments_dream", rows, "segments_real", "episodes, their whole segments summed"),
    ):  # fmt: skip
        real = np.array([r[truth] for r in group])
        pred = np.array([r[key] for r in group])
        summary[key] = {
            "pearson_r": float(np.corrcoef(real, pred)[0, 1]),
            "spearman_r": float(np.corrcoef(rank(real), rank(pred))[0, 1]),
            "mean": float(pred.mean()), "real_mean": float(real.mean()), "n": len(group),
        }  # fmt: skip
        print(f"{key:15s} Pearson r {summary[key]['pearson_r']:.3f}  Spearman r "
              f"{summary[key]['spearman_r']:.3f}  mean predicted {pred.mean():7.1f}  "
              f"(real {real.mean():7.1f}, {len(group)} {what})")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "episodes": rows, "segments": segments}, f, indent=1)
    env.close()


if __name__ == "__main__":
    main()
