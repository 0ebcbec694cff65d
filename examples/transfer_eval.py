"""Score saved controllers in the dream and in the real game, side by side.

    python examples/transfer_eval.py models/doom_take_cover
    python examples/transfer_eval.py runs/doom/evolve-* --world-model runs/doom/world_model \\
        --taus 1.0 1.15 --episodes 100

Each argument is a controller folder (``controller.safetensors`` + ``controller.json``,
as written by ``dreamgym evolve``, ``dreamgym export`` or
``dreamgym.save_controller``). Every controller plays ``--episodes`` real episodes
(game seeds ``--seed``, ``--seed``+1, ...) and ``--episodes`` dreams at each tau,
through the same evaluators CMA-ES uses; the gap between the columns is how far
the dream flatters (or undersells) it. Reports are written next to each controller
(for a shipped controller, under ``runs/evaluate/``, so its own reports stay as shipped).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dreamgym.train import evaluate
from dreamgym.world_model import CONFIG_FILE


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("controllers", nargs="+", type=Path, help="controller folders")
    p.add_argument(
        "--world-model",
        type=Path,
        default=None,
        help="world-model folder (default: the controller's own folder if it holds one, "
        "else the shipped model of the controller's game)",
    )
    p.add_argument("--taus", type=float, nargs="+", default=[1.0, 1.15])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    header = ["controller", "real"] + [f"dream tau {t:g}" for t in args.taus]
    rows = []
    for folder in args.controllers:
        game = json.loads((folder / "controller.json").read_text())["game"]
        source = args.world_model or (folder if (folder / CONFIG_FILE).is_file() else game)
        row = [str(folder)]
        for tau in [None, *args.taus]:
            config = evaluate.EvaluateConfig(
                episodes=args.episodes,
                workers=args.workers,
                seed=args.seed,
                dream=tau is not None,
                tau=tau,
                controller=str(folder),
            )  # the report goes next to the controller (shipped ones: under runs/evaluate/)
            r = json.loads(evaluate.run(config, source).read_text())
            row.append(f"{r['mean']:.0f} ± {r['std']:.0f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    last = args.seed + args.episodes - 1
    print(f"\n{args.episodes} episodes per cell (real: seeds {args.seed}-{last})")
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
