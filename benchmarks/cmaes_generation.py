"""Seconds per CMA-ES generation in the dream: popsize 64 x 16 trials, a Doom-sized M.

    python benchmarks/cmaes_generation.py [--threads N] [--mean-length L] [--popsize P]

A random world model of the paper's Doom sizes (z 64, LSTM 512; controller 1,088
parameters) stands in for a trained one: a step costs the same whatever the
weights. What a generation costs depends on how long the dreams live, and a random
M's done head ends them at once or never, so two generations are timed:

- ``full``: the done head silenced, every one of the 1,024 dreams runs to the
  2,100-step cap (the worst case: a population that never dies);
- ``varied``: the done head's bias set so dreams end at varied times, about
  ``L`` steps on average (as during training, where returns climb from ~200 to
  ~1,000); finished dreams leave the batch.

Each generation is what ``dreamgym evolve`` does per generation: ask, one batched
dream of all rollouts, tell, and the atomic checkpoint. The periodic score of the
CMA mean (1,024 rollouts every 25 generations) adds about 1/25 of a generation.
Printed: seconds per part, dream steps per second and the episode lengths.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dreamgym import dream_core as dc
from dreamgym.cmaes import CMAES
from dreamgym.controller import batched_forward
from dreamgym.policy import controller_config
from dreamgym.rollouts import DreamEvaluator, dream_rollouts
from dreamgym.train.common import save_checkpoint
from dreamgym.world_model import WorldModel

TARGET_SECONDS = 20.0
PAPER_SECONDS = 108.0  # 1800 generations in 54 h on 64 cores


def doom_sized_world(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    wm = WorldModel.create("doom_take_cover", n_bank=64)  # z 64, LSTM 512: the paper's M
    with torch.no_grad():
        wm.z0_mu.normal_()
        wm.z0_logvar.fill_(-2.0)
    return wm


def done_row(wm: WorldModel) -> int:
    c = wm.mdnrnn.config
    return 3 * c.n_mix * c.z_dim


def silence_done(wm: WorldModel) -> None:
    with torch.no_grad():
        wm.mdnrnn.head.bias[done_row(wm)] = -1e6


@torch.no_grad()
def calibrate_done(wm: WorldModel, mean_length: float, tau: float, rows=128, steps=150) -> None:
    """Set the done bias so that a step ends a dream with probability ~1 / mean_length.

    Samples M's done logit along dreams of random controllers (done silenced) and puts
    the threshold at its (1 - 1/mean_length) quantile; the logit varies from step to
    step with the sampled z, so episode lengths come out roughly geometric.
    """
    d = done_row(wm)
    head = wm.mdnrnn.head
    bias = float(head.bias[d])
    head.bias[d] = -1e6
    g = torch.Generator().manual_seed(123)
    cfg = controller_config(wm)
    params = torch.randn(rows, cfg.num_params, generator=g) * 0.1
    state = dc.initial_state(wm, rows, g)
    logits = []
    for _ in range(steps):
        y = batched_forward(cfg, params, dc.observation(wm, state).unsqueeze(1)).squeeze(1)
        state, _, _ = dc.step(wm, state, wm.game.controller_to_action(y), tau, g)
        logits.append(state.lstm.h @ head.weight[d] + bias)
    threshold = torch.quantile(torch.cat(logits), 1 - 1 / mean_length).item()
    head.bias[d] = bias - threshold


def generation(wm, es: CMAES, trials: int, tau: float, ckpt: Path) -> dict:
    """One generation as ``evolve.run`` does it; seconds per part and the episode lengths."""
    t0 = time.perf_counter()
    X = es.ask()
    t1 = time.perf_counter()
    g = torch.Generator().manual_seed(es.generation + 1)
    returns, steps = dream_rollouts(wm, X, trials, tau, g)  # Doom: return = episode length
    t2 = time.perf_counter()
    es.tell(returns.numpy().mean(axis=1))
    t3 = time.perf_counter()
    arrays, values = es.state()
    save_checkpoint(ckpt, arrays, {"cma": values})
    t4 = time.perf_counter()
    return {
        "ask": t1 - t0,
        "dream": t2 - t1,
        "tell": t3 - t2,
        "checkpoint": t4 - t3,
        "total": t4 - t0,
        "steps": steps,
        "lengths": returns.numpy().ravel(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--popsize", type=int, default=64)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--tau", type=float, default=1.15)
    p.add_argument("--mean-length", type=float, default=500.0)
    p.add_argument("--skip-full", action="store_true", help="time only the varied generation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    wm = doom_sized_world()
    cfg = controller_config(wm)
    n_rollouts = args.popsize * args.trials
    print(
        f"CMA-ES generation: popsize {args.popsize} x {args.trials} trials = {n_rollouts} dreams, "
        f"Doom-sized M (z {wm.mdnrnn.config.z_dim}, LSTM {wm.mdnrnn.config.hidden}), "
        f"controller {cfg.num_params} params, tau {args.tau}, cap {wm.game.max_episode_steps} "
        f"steps, {args.threads} torch threads on {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f} before start"
    )
    DreamEvaluator(wm, args.tau).returns(np.zeros((2, cfg.num_params)), 2, 0)  # warm-up

    scenarios = []
    if not args.skip_full:
        full = doom_sized_world()
        silence_done(full)
        scenarios.append(("full", full))
    varied = doom_sized_world()
    calibrate_done(varied, args.mean_length, args.tau)
    scenarios.append(("varied", varied))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, world in scenarios:
            es = CMAES(cfg.num_params, args.popsize, 0.1, seed=0)
            r = generation(world, es, args.trials, args.tau, Path(tmp) / "cma.safetensors")
            rows.append((name, r))
            lengths = r["lengths"]
            print(
                f"  {name:<7} {r['total']:7.1f} s/generation  (ask {r['ask']:.2f}, dream "
                f"{r['dream']:.1f}, tell {r['tell']:.2f}, checkpoint {r['checkpoint']:.2f})  "
                f"{r['steps'] / r['dream']:8.0f} dream steps/s  episode length mean "
                f"{lengths.mean():.0f}, median {np.median(lengths):.0f}, min {lengths.min():.0f}, "
                f"max {lengths.max():.0f}",
                flush=True,
            )
    print()
    print(f"{'generation':<12}{'s/gen':>8}{'target':>9}{'paper (64 cores)':>19}")
    for name, r in rows:
        verdict = "ok" if r["total"] <= TARGET_SECONDS else "over"
        total = r["total"]
        print(f"{name:<12}{total:>8.1f}{TARGET_SECONDS:>7.0f} {verdict:<4}{PAPER_SECONDS:>14.0f}")
    per_kstep = [r["dream"] / r["steps"] * 1000 for _, r in rows]
    fixed = np.mean([r["ask"] + r["tell"] + r["checkpoint"] for _, r in rows])
    print(
        f"\ncost model: {fixed:.1f} s fixed + {np.mean(per_kstep) * 1000:.1f} ms per 1,000 dream "
        f"steps; at {TARGET_SECONDS:.0f} s a generation affords "
        f"{(TARGET_SECONDS - fixed) / np.mean(per_kstep):,.0f}k dream steps, a mean episode "
        f"of {(TARGET_SECONDS - fixed) / np.mean(per_kstep) * 1000 / n_rollouts:.0f} steps"
    )


if __name__ == "__main__":
    main()
