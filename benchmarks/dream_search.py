"""Does the game pay what an optimiser gains in a dream?

    python benchmarks/dream_search.py RUN --init CONTROLLER [--timesteps 5000000] \\
        [--starts real --max-steps 250] [--episodes 100] [--seed 1000] [--workers 2]

``dream_honesty.py`` asks how a dream ranks a fixed panel, policies nobody optimised
against it. This asks what a search finds there. PPO (``dreamgym ppo``, the stage's
defaults unless given) refines ``--init``, a controller that reads RUN's M (carry
one over with ``dreamgym distill``), in the dream of RUN's world model for
``--timesteps`` steps; its checks keep one C. The C it started from and
the kept C are then played on the same real episodes (seeds ``--seed`` onwards).

A dream that can be trained in has a real gain (kept - start) of 0 or more; an
exploitable one raises the dream score and lowers the real one. It prints both
Cs' dream scores (and held-out dreams' scores, which keep C with
``--check-worlds``) and real scores, the gains and, of a positive start, the
ratios, and writes them as JSON (``--out``; default ``search.json`` in the PPO
folder). The PPO run resumes (a start rewritten since is refused), and each real
score is written beside its C, as ``dreamgym evaluate`` writes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dreamgym._io import METRICS_FILE
from dreamgym.policy import CONFIG_FILE
from dreamgym.train import evaluate, ppo
from dreamgym.world_model import atomic_write_text, read_json


def measure(run_dir, config: ppo.PPOConfig, episodes: int, seed: int, workers: int = 2,
            real_max_steps: int | None = None) -> dict:  # fmt: skip
    """Train ``config`` (its ``init`` is the start) in RUN's dream; score start and kept C."""
    if not config.init:
        raise ValueError("init: name the controller PPO starts from (it must read RUN's M)")
    out = ppo.run(config, run_dir)
    lines = (out / METRICS_FILE).read_text().splitlines()
    first = json.loads(lines[0])  # the start, 0 steps
    kept = read_json(out / CONFIG_FILE)  # the kept C's own check, written with it
    steps = json.loads(lines[-1])["timesteps"]
    result = {"run": str(run_dir), "ppo": str(out), "timesteps": steps,
              "kept_at": kept["timesteps"], "real_seeds": [seed, seed + episodes - 1]}  # fmt: skip
    for name, folder, row in (("start", config.init, first), ("kept", out, kept)):
        cfg = evaluate.EvaluateConfig(controller=str(folder), episodes=episodes, seed=seed,
                                      workers=workers, max_steps=real_max_steps)  # fmt: skip
        real = json.loads(Path(evaluate.run(cfg, run_dir)).read_text())
        result[name] = {"controller": str(folder), "dream": row["dream_score"],
                        "held_out": row.get("held_out_score"), "real": real["mean"],
                        "real_ci95": real["ci95"]}  # fmt: skip
    for score in ("dream", "held_out", "real"):
        a, b = result["start"][score], result["kept"][score]
        result[f"{score}_gain"] = None if a is None else b - a
        result[f"{score}_ratio"] = b / a if a is not None and a > 0 else None  # of a positive start
    return result


def format_result(r: dict) -> str:
    held = r["start"]["held_out"] is not None
    head = "| C | dream |" + (" held-out dreams |" if held else "")
    lines = [f"{head} real, seeds {r['real_seeds'][0]}-{r['real_seeds'][1]} |",
             "|---|---|---|" + ("---|" if held else "")]  # fmt: skip
    for name in ("start", "kept"):
        c = r[name]
        ci = "" if c["real_ci95"] is None else " (95% CI {:.0f}-{:.0f})".format(*c["real_ci95"])
        held_cell = f" {c['held_out']:.1f} |" if held else ""
        lines.append(f"| {name} | {c['dream']:.1f} |{held_cell} {c['real']:.1f}{ci} |")
    gains = ", ".join(
        f"{score} {r[f'{score}_gain']:+.1f}"
        + ("" if r[f"{score}_ratio"] is None else f" ({r[f'{score}_ratio']:.2f}x)")
        for score in ("dream", "held_out", "real") if r[f"{score}_gain"] is not None
    )  # fmt: skip
    lines.append(f"kept at {r['kept_at']:,} of {r['timesteps']:,} steps; kept - start: {gains}")
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
