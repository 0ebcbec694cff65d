"""CMA-ES inside the Doom dream, then the same controller in real VizDoom.

    python examples/cmaes_dream.py                          # shipped world model, ~5 min
    python examples/cmaes_dream.py --generations 100 --world-model runs/doom/world_model

The loop the ``evolve`` stage runs, written out: ask CMA-ES for a population of
linear controllers, play each in ``--trials`` dreams (the whole population is one
batched dream), tell it the mean survival, repeat. The real game is never touched
until the end, when the CMA mean plays ``--episodes`` real episodes through
``dreamgym.make_real`` (same observation and action spaces as the dream).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import dreamgym
from dreamgym.cmaes import CMAES
from dreamgym.policy import controller_config, save_controller
from dreamgym.rollouts import DreamEvaluator, play_episode
from dreamgym.shipped import load_world_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-model", default=None, help="world-model folder (default: shipped)")
    p.add_argument("--tau", type=float, default=1.15, help="dream temperature")
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--popsize", type=int, default=32)
    p.add_argument("--trials", type=int, default=8, help="dreams per controller")
    p.add_argument("--episodes", type=int, default=20, help="real episodes to score")
    p.add_argument("--save", default="runs/cmaes_dream", help="controller folder to write")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)

    wm = load_world_model("doom_take_cover", args.world_model)
    es = CMAES(controller_config(wm).num_params, popsize=args.popsize, sigma0=0.1, seed=args.seed)
    dream = DreamEvaluator(wm, tau=args.tau)
    for generation in range(1, args.generations + 1):
        population = es.ask()  # (popsize, 1088)
        fitness = dream.returns(population, args.trials, seed=generation).mean(axis=1)
        es.tell(fitness)
        print(f"generation {generation:3d}: dream survival best {fitness.max():6.0f}, "
              f"mean {fitness.mean():6.0f}, sigma {es.sigma:.3f}", flush=True)  # fmt: skip

    controller = es.mean
    in_dream = dream.returns(controller[None], 256, seed=10**6)[0]
    print(f"CMA mean in 256 fresh dreams at tau {args.tau}: "
          f"{in_dream.mean():.0f} ± {in_dream.std():.0f}")  # fmt: skip
    save_controller(args.save, controller, "doom_take_cover", {"tau": args.tau})

    real = dreamgym.make_real("DreamDoom-v0", world_model=wm)
    returns = [play_episode(real, wm, controller, seed=i, max_steps=2100)[0]
               for i in range(args.episodes)]  # fmt: skip
    real.close()
    print(f"real VizDoom, {args.episodes} episodes (seeds 0-{args.episodes - 1}): "
          f"{np.mean(returns):.0f} ± {np.std(returns):.0f}  (random ~210, solved 750)")  # fmt: skip
    source = args.world_model or "doom_take_cover"
    print(f"saved the controller to {args.save}; score it again with "
          f"`dreamgym evaluate {source} --controller {args.save}`")  # fmt: skip


if __name__ == "__main__":
    main()
