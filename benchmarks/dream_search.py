"""Does the game pay what an optimiser gains in a dream?

    python benchmarks/dream_search.py RUN --init CONTROLLER [--timesteps 5000000] \\
        [--starts real --max-steps 250] [--episodes 100] [--seed 1000] [--workers 2]

``dream_honesty.py`` asks how a dream ranks a fixed panel, policies nobody optimised
against it. This asks what a search finds there. PPO (``dreamgym ppo``, the stage's
defaults unless given) refines ``--init``, a controller that reads RUN's M (carry
one over with ``dreamgym distill``), in the dream of RUN's world model for
``--timesteps`` steps; its dream-score checks keep one C. The C it started from and
the kept C are then played on the same real episodes (seeds ``--seed`` onwards).

A dream that can be trained in has a real ratio (kept / start) of 1 or more; an
exploitable one raises the dream score and lowers the real one. It prints both
Cs' dream and real scores and the two ratios, and writes them as JSON (``--out``;
default ``search.json`` in the PPO folder). The PPO run resumes, and each real
score is written beside its C, as ``dreamgym evaluate`` writes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dreamgym._io import METRICS_FILE
from dreamgym.train import evaluate, ppo
from dreamgym.world_model import atomic_write_text


def measure(run_dir, config: ppo.PPOConfig, episodes: int, seed: int, workers: int = 2,
            real_max_steps: int | None = None) -> dict:  # fmt: skip
    """Train ``config`` (its ``init`` is the start) in RUN's dream; score start and kept C."""
    if not config.init:
        raise ValueError("init: name the controller PPO starts from (it must read RUN's M)")
    out = ppo.run(config, run_dir)
    rows = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    kept = [r for r in rows if r.get("kept")][-1]
    result = {"run": str(run_dir), "ppo": str(out), "timesteps": config.timesteps,
              "kept_at": kept["timesteps"], "real_seeds": [seed, seed + episodes - 1]}  # fmt: skip
    for name, folder, row in (("start", config.init, rows[0]), ("kept", out, kept)):
        cfg = evaluate.EvaluateConfig(controller=str(folder), episodes=episodes, seed=seed,
                                      workers=workers, max_steps=real_max_steps)  # fmt: skip
        real = json.loads(Path(evaluate.run(cfg, run_dir)).read_text())
        result[name] = {"controller": str(folder), "dream": row["dream_score"],
                        "real": real["mean"], "real_ci95": real["ci95"]}  # fmt: skip
    result["dream_ratio"] = result["kept"]["dream"] / result["start"]["dream"]
    result["real_ratio"] = result["kept"]["real"] / result["start"]["real"]
    return result


def format_result(r: dict) -> str:
    lines = [f"| C | dream | real, seeds {r['real_seeds'][0]}-{r['real_seeds'][1]} |",
             "|---|---|---|"]  # fmt: skip
    for name in ("start", "kept"):
        c = r[name]
        lo, hi = c["real_ci95"]
        lines.append(f"| {name} | {c['dream']:.1f} | {c['real']:.1f} (95% CI {lo:.0f}-{hi:.0f}) |")
    ratios = f"dream ratio {r['dream_ratio']:.2f}, real ratio {r['real_ratio']:.2f}"
    lines.append(f"kept at {r['kept_at']:,} of {r['timesteps']:,} steps; {ratios}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="run directory whose world model is searched")
    ap.add_argument("--init", required=True, help="the controller PPO starts from")
    ap.add_argument("--timesteps", type=int, default=5_000_000)
    ap.add_argument("--starts", default="real", help="dreams from 'first' frames or 'real' states")
    ap.add_argument("--max-steps", type=int, default=250, help="dream length")
    ap.add_argument("--tau", type=float, default=1.0, help="dream temperature")
    ap.add_argument("--check-worlds", nargs="*", default=(), help="held-out world models")
    ap.add_argument("--episodes", type=int, default=100, help="real episodes per C")
    ap.add_argument("--seed", type=int, default=1000, help="first real seed")
    ap.add_argument("--workers", type=int, default=2, help="real-game worker processes")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of PPO")
    ap.add_argument("--out", help="where to write the JSON (default: search.json in PPO's folder)")
    args = ap.parse_args(argv)
    config = ppo.PPOConfig(init=args.init, timesteps=args.timesteps, starts=args.starts,
                           max_steps=args.max_steps, tau=args.tau, threads=args.threads,
                           check_worlds=tuple(args.check_worlds))  # fmt: skip
    result = measure(args.run, config, args.episodes, args.seed, args.workers)
    out = Path(args.out) if args.out else Path(result["ppo"]) / "search.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(format_result(result))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
