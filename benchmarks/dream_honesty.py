"""Does the dream rank policies as the real game does, and pay what it pays?

    python benchmarks/dream_honesty.py --world-model models/doom_take_cover \\
        [--dreams 100] [--episodes 100] [--tau 1.15] [--dropout 0] [--seed 0] [--workers 2]

Every policy of the game's fixed panel (``benchmarks/panel/<game>/panel.json``:
random and constant actions, CMA-ES controllers of early and late generations,
an over-optimised one, PPO's, the shipped one, ...) plays ``--dreams`` dreams of
the world model under test (one batch per policy, the same first frames for
all) and ``--episodes`` real episodes (game seeds 0 to episodes - 1). A
controller sees any dream through its own V and M, as it sees the real game
(column ``sight``: ``latent`` in the dream it was trained in, ``follow`` beside
another M with its V, ``pixels`` through another V's frames; see
``dreamgym.train.cross_dream``). Real scores are cached in the panel's
``real_scores.json``, so a new world model costs only its dreams.

Printed: each policy's dream and real score, the share of dreams that reach the
episode limit (in games that pay per step survived), the ratio dream / real (1.0 is
an honest dream; above 1 it flatters; it means little where scores near 0 or below),
and Spearman's rank correlation between the dream and real scores across the panel.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dreamgym.reports import score_text
from dreamgym.spaces import check_tau
from dreamgym.train.cross_dream import SIGHTS, cross_dream_returns
from dreamgym.train.panel import (
    REAL_SCORES_FILE,
    RealScores,
    load_panel,
    real_returns,
    seeded,
    spearman,
)
from dreamgym.world_model import WorldModel, vae_digest

ROOT = Path(__file__).resolve().parents[1]
PANELS = ROOT / "benchmarks" / "panel"


def at_cap(returns: np.ndarray, cap: float | None) -> str:
    return "-" if cap is None else f"{np.mean(returns >= cap):.0%}"


def score(returns: np.ndarray | None) -> str:
    if returns is None:
        return "-"
    mean, std = score_text(returns.mean(), returns.std())  # 3 decimals for returns of 0-1
    return f"{mean:>7} ± {std:>6}"


def run(args: argparse.Namespace) -> dict:
    """Score the panel; print the table as it fills; return every number."""
    wm = WorldModel.load(args.world_model)
    spec = wm.game
    panel_dir = Path(args.panel) if args.panel else PANELS / spec.name
    root = Path(args.root) if args.root else ROOT
    game, entries = load_panel(panel_dir, root)
    if game.name != spec.name:
        raise SystemExit(
            f"--panel: {panel_dir} is a {game.name} panel, the world model {spec.name}"
        )
    if args.only:
        missing = set(args.only) - {e.name for e in entries}
        if missing:
            raise SystemExit(f"--only: no policy {sorted(missing)[0]!r} in {panel_dir}")
        entries = [e for e in entries if e.name in args.only]
    tau = check_tau(spec.default_tau if args.tau is None else args.tau)
    cache = RealScores(panel_dir / REAL_SCORES_FILE)
    # a return at the cap means a dream survived to the episode limit (games paid per step)
    cap = None if spec.constant_reward is None else spec.constant_reward * spec.max_episode_steps
    print(f"dream honesty: {spec.name}, world model {args.world_model} "
          f"({vae_digest(args.world_model)[:16]}), tau {tau:g}, dropout "
          f"{wm.dropout if args.dropout is None else args.dropout:g}")  # fmt: skip
    print(f"dreams: {args.dreams} per policy (seed {args.seed}); real: {args.episodes} episodes "
          f"per policy (game seeds 0-{args.episodes - 1})\n")  # fmt: skip
    head = (
        f"{'policy':<16} {'sight':<7} {'dream':>16} {'at cap':>6} {'real':>16} {'dream/real':>10}"
    )
    print(head)
    print("-" * len(head), flush=True)
    rows = []
    for entry in entries:
        t0 = time.time()
        dream, how = cross_dream_returns(
            wm, entry.actor(), args.dreams, tau, seeded(args.seed, 0), seeded(args.seed, 1),
            rng=np.random.default_rng([args.seed, 2]), force=args.sight, dropout=args.dropout,
        )  # fmt: skip
        with tqdm(total=args.episodes, desc=f"{entry.name} (real)", leave=False) as bar:
            real, cached = real_returns(
                entry, spec, cache, args.episodes, 0, args.workers, not args.cached_only,
                bar.update, args.backend, args.ray_address,
            )  # fmt: skip
        ratio = dream.mean() / real.mean() if real is not None and real.mean() else float("nan")
        rows.append({"name": entry.name, "sight": how, "dream": dream, "real": real,
                     "cached": cached, "ratio": ratio, "seconds": time.time() - t0})  # fmt: skip
        print(f"{entry.name:<16} {how or '-':<7} {score(dream):>16} {at_cap(dream, cap):>6} "
              f"{score(real):>16} {ratio:9.2f}x", flush=True)  # fmt: skip
    both = [r for r in rows if r["real"] is not None]
    rho = spearman([r["dream"].mean() for r in both], [r["real"].mean() for r in both])
    played = sum(not r["cached"] for r in both)
    print(f"\nSpearman rho, dream vs real, over {len(both)} policies: {rho:.3f}")
    print(
        f"real scores: {len(both) - played} cached, {played} played"
        + (f", {len(rows) - len(both)} missing (--cached-only)" if len(both) < len(rows) else "")
    )
    result = {"rows": rows, "rho": rho, "tau": tau}
    if args.out:
        Path(args.out).write_text(json.dumps(summary(args, result), indent=1) + "\n")
    return result


def summary(args: argparse.Namespace, result: dict) -> dict:
    """The numbers of a run as JSON: every policy's means and standard deviations."""

    def stats(x: np.ndarray | None) -> dict | None:
        return None if x is None else {"mean": float(x.mean()), "std": float(x.std()), "n": len(x)}

    rows = [
        {"name": r["name"], "sight": r["sight"], "dream": stats(r["dream"]),
         "real": stats(r["real"]), "ratio": finite(r["ratio"])}
        for r in result["rows"]
    ]  # fmt: skip
    args = {k: v for k, v in vars(args).items() if k != "out"}
    return {"args": args, "tau": result["tau"], "spearman": finite(result["rho"]), "rows": rows}


def finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-model", required=True, help="world-model folder under test")
    p.add_argument("--dreams", type=int, default=100, help="dreams per policy")
    p.add_argument("--episodes", type=int, default=100, help="real episodes per policy")
    p.add_argument("--tau", type=float, default=None, help="dream temperature (game default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dreams")
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="dropout rate of the dream's M (default: the rate it was trained with)",
    )
    p.add_argument("--workers", type=int, default=2, help="real-game worker processes")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where the real-game workers run")  # fmt: skip
    p.add_argument("--ray-address", default=None, help="Ray cluster (default: a local Ray)")
    p.add_argument("--panel", default=None, help="panel folder (default benchmarks/panel/GAME)")
    p.add_argument("--root", default=None, help="what world-model paths of the panel are "
                   "relative to (default: this repository)")  # fmt: skip
    p.add_argument("--sight", choices=SIGHTS, default=None,
                   help="see every dream this way (pixels: check the pixel path)")  # fmt: skip
    p.add_argument("--only", nargs="+", default=None, help="score only these policies")
    p.add_argument("--cached-only", action="store_true", help="play no real episodes")
    p.add_argument("--out", default=None, help="also write the numbers here (JSON)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the dreams")
    args = p.parse_args(argv)
    for name in ("dreams", "episodes", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: expected an integer >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    main()
