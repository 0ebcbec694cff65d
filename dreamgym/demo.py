"""Play real Doom and show what V sees.

Plays a few real DoomTakeCover episodes with the paper's random policy (a
uniform action in [-1, 1] held for 1-10 frames). V is the shipped world model's
if one is in ``models/doom_take_cover/``; otherwise a fresh ConvVAE (z=64) is
trained on the frames just played for a short CPU budget, keeping the last
episode aside to measure it on. Writes ``OUT/reconstruction.png`` (real frames
above, V's reconstructions below) and ``OUT/summary.json``, and prints a table.

    python -m dreamgym.demo --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dreamgym.games import make_game
from dreamgym.shipped import shipped_dir
from dreamgym.train.policies import doom_random_policy
from dreamgym.vae import ConvVAE, frames_to_tensor, tensor_to_frames, vae_loss
from dreamgym.world_model import CONFIG_FILE, WEIGHTS_FILE, WorldModel

GAME = "doom_take_cover"


def play(episodes: int, seed: int) -> tuple[list[np.ndarray], list[float]]:
    """Real episodes with the random policy: frames (T, 64, 64, 3) uint8 and the return of each."""
    env = make_game(GAME)
    frames, returns = [], []
    try:
        for i in tqdm(range(episodes), desc="play real Doom", unit="ep"):
            policy = doom_random_policy(np.random.default_rng(seed + i))
            obs, _ = env.reset(seed=seed + i)
            ep, ret, done = [obs], 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                ep.append(obs)
                ret += reward
                done = terminated or truncated
            frames.append(np.stack(ep))
            returns.append(ret)
    finally:
        env.close()
    return frames, returns


def train_vae(frames: np.ndarray, seconds: float, seed: int, batch_size: int = 32):
    """A ConvVAE (z=64) trained on ``frames`` for ``seconds`` of wall time; returns (V, steps)."""
    torch.manual_seed(seed)
    vae = ConvVAE(z_dim=64)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)  # 10x the paper's: a budget of seconds
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    steps, t0 = 0, time.time()
    bar = tqdm(
        total=round(seconds),
        desc="train V",
        unit="s",
        bar_format="{l_bar}{bar}| {n:.0f}/{total}s{postfix}",
    )
    while (elapsed := time.time() - t0) < seconds:
        x = frames_to_tensor(frames[rng.integers(0, len(frames), batch_size)])
        x_hat, mu, logvar = vae(x, generator=gen)
        loss, rec, kl = vae_loss(x, x_hat, mu, logvar, vae.config.kl_tolerance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        bar.update(min(time.time() - t0, seconds) - elapsed)
        bar.set_postfix(step=steps, rec=f"{rec.item():.0f}", kl=f"{kl.item():.1f}")
    bar.close()
    return vae.eval(), steps


@torch.no_grad()
def reconstruct(vae: ConvVAE, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """V's reconstruction of each frame: decode(mu), uint8."""
    out = [
        tensor_to_frames(vae.decode(vae.encode(frames_to_tensor(frames[i : i + batch_size]))[0]))
        for i in range(0, len(frames), batch_size)
    ]
    return np.concatenate(out)


def mse_per_pixel(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error per pixel and channel, on the [0, 1] scale."""
    return float(np.mean((a.astype(np.float32) / 255 - b.astype(np.float32) / 255) ** 2))


def save_grid(path: Path, real: np.ndarray, recon: np.ndarray, scale: int = 2, gap: int = 2):
    """Row of real frames above the row of their reconstructions, as a PNG."""
    n = len(real)
    grid = np.full((2 * 64 + 3 * gap, n * 64 + (n + 1) * gap, 3), 255, np.uint8)
    for row, images in enumerate((real, recon)):
        for j, image in enumerate(images):
            y, x = gap + row * (64 + gap), gap + j * (64 + gap)
            grid[y : y + 64, x : x + 64] = image
    img = Image.fromarray(grid)
    img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST).save(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m dreamgym.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--episodes", type=int, default=4, help="real episodes to play")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="V's training budget when none ships"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes: expected at least 1")
    if args.seconds < 0:
        parser.error("--seconds: expected a number >= 0")

    t0 = time.time()
    episodes, returns = play(args.episodes, args.seed)
    folder = shipped_dir(GAME)
    if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        vae = WorldModel.load(folder, game=GAME).vae
        v_source = f"shipped weights, {folder}"
        test, measured_on = np.concatenate(episodes), "all frames played (V never saw them)"
    else:
        train = np.concatenate(episodes[:-1] if len(episodes) > 1 else episodes)
        vae, steps = train_vae(train, args.seconds, args.seed)
        v_source = (
            f"none shipped: trained {args.seconds:.0f} s ({steps} steps) on {len(train)} frames"
        )
        if len(episodes) > 1:
            test, measured_on = episodes[-1], "the last episode (kept out of training)"
        else:
            test, measured_on = train, "the frames V trained on (one episode only)"
    recon = reconstruct(vae, test)
    mean_frame = np.concatenate(episodes).mean(0, keepdims=True)
    pick = np.linspace(0, len(test) - 1, 8).round().astype(int)
    args.out.mkdir(parents=True, exist_ok=True)
    save_grid(args.out / "reconstruction.png", test[pick], recon[pick])

    lengths = [len(e) for e in episodes]
    summary = {
        "game": GAME,
        "episodes": len(episodes),
        "frames": int(sum(lengths)),
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "V": v_source,
        "reconstruction_mse_per_pixel": mse_per_pixel(test, recon),
        "mean_frame_mse_per_pixel": mse_per_pixel(test, np.broadcast_to(mean_frame, test.shape)),
        "measured_on": measured_on,
        "seconds": round(time.time() - t0, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = [
        ("episodes", f"{summary['episodes']} (real DoomTakeCover, random policy)"),
        ("frames", f"{summary['frames']}"),
        ("return", f"{summary['return_mean']:.1f} ± {summary['return_std']:.1f}"),
        ("V", v_source),
        (
            "reconstruction MSE/pixel",
            f"{summary['reconstruction_mse_per_pixel']:.4f} on {measured_on}",
        ),
        ("  mean-frame baseline", f"{summary['mean_frame_mse_per_pixel']:.4f}"),
        ("seconds", f"{summary['seconds']:.1f}"),
    ]
    print()
    for key, value in rows:
        print(f"{key:<26} {value}")
    print(
        f"\nwrote {args.out / 'reconstruction.png'} (top: real frames, bottom: V's reconstructions)"
    )
    return summary


if __name__ == "__main__":
    main()
