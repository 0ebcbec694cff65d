"""The paper's temperature table: controllers trained only in the Doom dream at each tau,
each scored in the dream and on real VizDoom episodes.

    python examples/tau_sweep.py --run runs/tau_sweep                 # the shipped world model
    python examples/tau_sweep.py --run runs/tau_sweep --world-model runs/doom/world_model

For every tau it runs CMA-ES in the dream (``dreamgym.train.evolve``), keeps the
CMA mean that scored best on fresh dreams, then scores that controller on
``--episodes`` real episodes (game seeds 0..episodes-1) and on ``--episodes``
dreams at its own tau. Every step resumes: a rerun skips what is done and
continues what was cut off. Writes ``RUN/tau_table.md`` and ``RUN/tau_table.json``
and prints the table next to the paper's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dreamgym._io import read_jsonl
from dreamgym.shipped import shipped_dir
from dreamgym.train import evaluate
from dreamgym.train.evolve import METRICS_FILE, EvolveConfig, evolve, folder_name

TAUS = (0.10, 0.50, 1.00, 1.15, 1.30)
PAPER = {  # tau: (dream score, real score), 100 real episodes each
    0.10: ("2086 ± 140", "193 ± 58"),
    0.50: ("2060 ± 277", "196 ± 50"),
    1.00: ("1145 ± 690", "868 ± 511"),
    1.15: ("918 ± 546", "1092 ± 556"),
    1.30: ("732 ± 269", "753 ± 139"),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/tau_sweep"), help="output folder")
    p.add_argument("--world-model", type=Path, default=None, help="default: the shipped one")
    p.add_argument("--taus", type=float, nargs="+", default=list(TAUS))
    p.add_argument("--generations", type=int, default=30, help="CMA-ES generations per tau")
    p.add_argument("--popsize", type=int, default=64)
    p.add_argument("--trials", type=int, default=16, help="dreams per controller")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-rollouts", type=int, default=512)
    p.add_argument("--episodes", type=int, default=100, help="real episodes and dreams per tau")
    p.add_argument("--workers", type=int, default=2, help="real-game worker processes")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the dream")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def score(controller: Path, wm_dir: Path, mode: str, tau: float, args) -> dict:
    """The evaluate stage's report of ``controller`` in the dream at ``tau`` or the real game."""
    name = "evaluate_real.json" if mode == "real" else f"evaluate_dream_tau{tau:g}.json"
    report = controller / name
    if report.is_file() and json.loads(report.read_text())["episodes"] == args.episodes:
        return json.loads(report.read_text())
    config = evaluate.EvaluateConfig(
        episodes=args.episodes,
        workers=args.workers,
        seed=args.seed,
        dream=mode == "dream",
        tau=tau if mode == "dream" else None,
        controller=str(controller),
        threads=args.threads,
    )
    return json.loads(evaluate.run(config, wm_dir).read_text())


def table(rows: list[dict]) -> str:
    lines = [
        "| tau | CMA-ES generations | dream score (here) | real score (here) "
        "| dream (paper) | real (paper) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = PAPER.get(round(r["tau"], 2), ("-", "-"))
        d, x = r["dream"], r["real"]
        here = f"{d['mean']:.0f} ± {d['std']:.0f} | {x['mean']:.0f} ± {x['std']:.0f}"
        gens = f"{r['generations']} (kept: {r['generation']})"
        lines.append(f"| {r['tau']:.2f} | {gens} | {here} | {paper[0]} | {paper[1]} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    wm_dir = args.world_model or shipped_dir("doom_take_cover")
    args.run.mkdir(parents=True, exist_ok=True)
    rows = []
    for tau in args.taus:
        config = EvolveConfig(
            tau=tau,
            generations=args.generations,
            popsize=args.popsize,
            trials=args.trials,
            eval_every=args.eval_every,
            eval_rollouts=args.eval_rollouts,
            seed=args.seed,
            threads=args.threads,
        )
        controller = evolve(config, wm_dir, args.run / folder_name(config))
        info = json.loads((controller / "controller.json").read_text())
        rows.append(
            {
                "tau": tau,
                "generations": len(read_jsonl(controller / METRICS_FILE)),
                "generation": info["eval"]["generation"],
                "dream": score(controller, wm_dir, "dream", tau, args),
                "real": score(controller, wm_dir, "real", tau, args),
            }
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    rows.sort(key=lambda r: r["tau"])
    text = table(rows)
    (args.run / "tau_table.md").write_text(
        f"{text}\n\nEach row: CMA-ES generations of {args.popsize} x {args.trials} dreams (a "
        "rerun with more generations continues a row; kept: the generation whose CMA mean "
        f"scored best on {args.eval_rollouts} fresh dreams, the controller scored here); "
        f"scores over {args.episodes} real episodes (seeds "
        f"{args.seed}-{args.seed + args.episodes - 1}) and {args.episodes} dreams at the "
        "row's tau.\n"
    )
    (args.run / "tau_table.json").write_text(
        json.dumps(
            [
                {k: r[k] for k in ("tau", "generations")}
                | {"controller_generation": r["generation"]}
                | {m: {k: r[m][k] for k in ("mean", "std", "episodes")} for m in ("dream", "real")}
                for r in rows
            ],
            indent=2,
        )
        + "\n"
    )
    print(f"\n{text}\n\nwrote {args.run / 'tau_table.md'}")


if __name__ == "__main__":
    main()
