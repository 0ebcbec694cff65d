"""Train a controller inside the shipped Doom dream, then score it in real VizDoom.

    python -m dreamgym.demo --out runs/demo        # what `make demo` runs

1. Loads the shipped world model (``models/doom_take_cover``: V, M and the bank
   of real first frames).
2. Evolves a linear controller with CMA-ES inside ``DreamDoom-v0`` at tau 1.15
   for ``--minutes`` of wall time. Every rollout is one row of a batched dream;
   the real game is never played while training.
3. Scores it on ``--episodes`` real episodes, next to the shipped controller and
   the paper's random policy on the same game seeds.
4. Prints a table with the paper's numbers and writes, into ``--out``:
   ``summary.json``; ``cma_curve.png`` (dream fitness per generation);
   ``side_by_side.gif`` (the real game | V's reconstruction of it | the dream
   continuing from the same first frame, both driven by the new controller); and
   ``evolve-<id>/`` (the controller, its CMA-ES checkpoint and metrics; named as
   ``dreamgym evolve`` names its folders).

A rerun continues the CMA-ES run in ``--out`` for another ``--minutes``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from dreamgym import dream_core as dc
from dreamgym._io import METRICS_FILE, read_jsonl
from dreamgym.controller import batched_forward
from dreamgym.games import make_game
from dreamgym.policy import CONFIG_FILE as CONTROLLER_FILE
from dreamgym.policy import controller_config, read_controller
from dreamgym.rollouts import RealEvaluator
from dreamgym.shipped import load_world_model, shipped_dir
from dreamgym.train.evolve import EvolveConfig, evolve, folder_name
from dreamgym.train.policies import doom_random_policy
from dreamgym.vae import frames_to_tensor, tensor_to_frames
from dreamgym.wrappers import make_real

GAME = "doom_take_cover"
ENV_ID = "DreamDoom-v0"
TAU = 1.15
PAPER_ROWS = [
    ("paper: controller trained in the dream, tau 1.15", "1092 ± 556", 100),
    ("paper: random policy", "210 ± 108", 100),
]


def random_policy_returns(episodes: int, seed: int) -> np.ndarray:
    """Real returns of the paper's random policy (an action held 1-10 frames), seeds seed+i."""
    env = make_game(GAME)
    out = []
    try:
        for i in tqdm(range(episodes), desc="real Doom, random policy", unit="ep"):
            policy = doom_random_policy(np.random.default_rng(seed + i), max_hold=10)
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                total += reward
                done = terminated or truncated
            out.append(total)
    finally:
        env.close()
    return np.array(out)


@torch.no_grad()
def side_by_side(wm, params: np.ndarray, seed: int, max_steps: int) -> list[np.ndarray]:
    """Frames (64, 196, 3): real | V's reconstruction | the dream from the same first frame.

    The controller ``params`` drives both the real game and the dream. When the dream
    ends (M predicts death) its panel stays on its last frame, darkened.
    """
    cfg = controller_config(wm)
    p = torch.as_tensor(params, dtype=torch.float32)[None]
    real = make_real(ENV_ID, world_model=wm, max_episode_steps=max_steps)
    g = torch.Generator().manual_seed(seed)
    obs, _ = real.reset(seed=seed)
    mu, _ = wm.vae.encode(frames_to_tensor(real.frame[None]))
    dream = dc.DreamState(mu, wm.mdnrnn.initial_state(1))
    dream_frame, dream_alive = tensor_to_frames(wm.vae.decode(mu))[0], True
    out, done = [], False
    try:
        while True:
            mu, _ = wm.vae.encode(frames_to_tensor(real.frame[None]))
            recon = tensor_to_frames(wm.vae.decode(mu))[0]
            shown = dream_frame if dream_alive else (dream_frame * 0.4).astype(np.uint8)
            gap = np.full((64, 2, 3), 255, np.uint8)
            out.append(np.concatenate([real.frame, gap, recon, gap, shown], axis=1))
            if done:
                break
            y = batched_forward(cfg, p, torch.as_tensor(obs)[None, None])[0, 0]
            obs, _, terminated, truncated, _ = real.step(wm.game.controller_to_action(y).numpy())
            done = terminated or truncated
            if dream_alive:
                y = batched_forward(cfg, p, dc.observation(wm, dream)[:, None])[:, 0]
                dream, _, dream_done = dc.step(wm, dream, wm.game.controller_to_action(y), TAU, g)
                dream_frame = tensor_to_frames(wm.vae.decode(dream.z))[0]
                dream_alive = not bool(dream_done[0])
    finally:
        real.close()
    return out


def save_gif(path: Path, frames: list[np.ndarray], stride: int = 2, scale: int = 2) -> None:
    """Every ``stride``-th frame, upscaled, with the panels labelled, at the game's speed."""
    images = []
    for frame in frames[::stride]:
        img = Image.fromarray(frame).resize(
            (frame.shape[1] * scale, frame.shape[0] * scale), Image.Resampling.NEAREST
        )
        canvas = Image.new("RGB", (img.width, img.height + 14), "white")
        canvas.paste(img, (0, 14))
        draw = ImageDraw.Draw(canvas)
        for i, label in enumerate(("real game", "V's reconstruction", "dream")):
            draw.text((i * 66 * scale + 2, 1), label, fill="black")
        images.append(canvas)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 * stride / 35), loop=0
    )


def save_curve(path: Path, metrics: list[dict], tau: float) -> None:
    """CMA-ES fitness per generation (best, mean, worst) and the scores of the CMA mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = [r["generation"] for r in metrics]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(gen, [r["worst"] for r in metrics], [r["best"] for r in metrics],
                    alpha=0.2, label="population: worst to best")  # fmt: skip
    ax.plot(gen, [r["mean"] for r in metrics], label="population mean")
    evals = [r for r in metrics if "eval_mean" in r]
    if evals:
        ax.errorbar([r["generation"] for r in evals], [r["eval_mean"] for r in evals],
                    [r["eval_std"] for r in evals], fmt="o", capsize=3,
                    label="CMA mean, scored on fresh dreams")  # fmt: skip
    ax.set_xlabel("generation")
    ax.set_ylabel(f"steps survived in the dream (tau {tau:g})")
    ax.set_title("CMA-ES inside DreamDoom-v0")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fmt(r: np.ndarray) -> str:
    """``mean ± std`` of returns, rounded to integers."""
    return f"{r.mean():.0f} ± {r.std():.0f}"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dreamgym.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument(
        "--world-model", type=Path, default=None, help="world-model folder (default: shipped)"
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="CMA-ES wall-time budget")
    parser.add_argument("--episodes", type=int, default=20, help="real episodes per policy")
    parser.add_argument("--popsize", type=int, default=32, help="CMA-ES population")
    parser.add_argument("--trials", type=int, default=8, help="dreams per controller")
    parser.add_argument("--gif-steps", type=int, default=700, help="length of the GIF's episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the dream")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes: expected at least 1")
    if not args.minutes > 0:
        parser.error("--minutes: expected a positive number")
    if args.gif_steps < 1:
        parser.error("--gif-steps: expected at least 1")
    return args


def _real_scores(args, wm_dir: Path, ours: np.ndarray) -> dict[str, np.ndarray]:
    """Returns of our controller, the shipped one (if any) and the random policy."""
    candidates = {"this run (CMA-ES in the dream)": ours}
    if (wm_dir / CONTROLLER_FILE).is_file():
        shipped, _ = read_controller(wm_dir)
        candidates["shipped controller"] = shipped.get_flat().numpy()
    bar = tqdm(total=len(candidates) * args.episodes, desc="real Doom, controllers", unit="ep")
    with RealEvaluator(wm_dir, workers=2) as real:
        returns = real.returns(np.stack(list(candidates.values())), args.episodes, args.seed,
                               bar.update)  # fmt: skip
    bar.close()
    scores = dict(zip(candidates, returns, strict=True))
    scores["random policy"] = random_policy_returns(args.episodes, args.seed)
    return scores


def _print_summary(args, scores: dict, metrics: list, best: dict, summary: dict) -> None:
    n = args.episodes
    rows = [(name, fmt(r), n) for name, r in scores.items()] + PAPER_ROWS
    width = max(len(r[0]) for r in rows)
    print(f"\nReal VizDoom TakeCover, steps survived (seeds {args.seed}-{args.seed + n - 1}; "
          "solved = 750)")  # fmt: skip
    print(f"{'policy':<{width}}  {'mean ± std':>12}  episodes")
    for name, score, episodes in rows:
        print(f"{name:<{width}}  {score:>12}  {episodes:>8}")
    print(
        f"\nCMA-ES: {len(metrics)} generations of {args.popsize} x {args.trials} dreams in "
        f"{summary['cma_es']['seconds']:.0f} s; its controller (generation {best['generation']}) "
        f"survives {best['mean']:.0f} ± {best['std']:.0f} steps in {best['rollouts']} dreams at "
        f"tau {TAU}."
    )
    print(f"total {summary['seconds']:.0f} s; wrote {args.out}/side_by_side.gif, "
          f"{args.out}/cma_curve.png, {args.out}/summary.json")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """What ``make demo`` runs: CMA-ES in the shipped Doom dream, then real episodes.

    Returns the summary it writes to ``summary.json``.
    """
    args = _args(argv)
    t0 = time.time()
    wm_dir = args.world_model or shipped_dir(GAME)
    # a clear error, with the training commands, if no world model ships
    wm = load_world_model(GAME, args.world_model)
    args.out.mkdir(parents=True, exist_ok=True)
    config = EvolveConfig(
        tau=TAU,
        generations=10_000,  # the wall-time budget ends the run
        popsize=args.popsize,
        trials=args.trials,
        eval_every=10,
        eval_rollouts=256,
        seed=args.seed,
        threads=args.threads,
        seconds=60 * args.minutes,
    )
    evolve_dir = evolve(config, wm_dir, args.out / folder_name(config))
    train_seconds = time.time() - t0
    metrics = list(read_jsonl(evolve_dir / METRICS_FILE))
    controller, info = read_controller(evolve_dir)
    ours = controller.get_flat().numpy()
    t1 = time.time()
    scores = _real_scores(args, wm_dir, ours)
    eval_seconds = time.time() - t1

    save_gif(args.out / "side_by_side.gif", side_by_side(wm, ours, args.seed, args.gif_steps))
    save_curve(args.out / "cma_curve.png", metrics, TAU)
    best = info["eval"]
    summary = {
        "game": GAME,
        "world_model": str(wm_dir),
        "cma_es": {
            "tau": TAU,
            "generations": len(metrics),
            "popsize": args.popsize,
            "trials": args.trials,
            "dream_steps": int(sum(r["steps"] for r in metrics)),
            "seconds": round(train_seconds, 1),
            "controller_generation": best["generation"],
            "controller_dream_score": [best["mean"], best["std"], best["rollouts"]],
        },
        "real_episodes": args.episodes,
        "real_seeds": [args.seed, args.seed + args.episodes - 1],
        "real": {
            k: {"mean": float(v.mean()), "std": float(v.std()), "returns": v.tolist()}
            for k, v in scores.items()
        },  # fmt: skip
        "real_seconds": round(eval_seconds, 1),
        "seconds": round(time.time() - t0, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(args, scores, metrics, best, summary)
    return summary


if __name__ == "__main__":
    main()
