"""Collection throughput: frames/s of `dreamgym collect` with W workers vs the raw game.

Prints the raw game's frames/s on one core (policy + preprocessing, no I/O), the
collector's frames/s with W workers (writing compressed shards), and the ratio
per core used (target >= 0.9). Usage: python benchmarks/collect_throughput.py [GAME] [W]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import numpy as np

from dreamgym import data
from dreamgym.games import get_game
from dreamgym.train.collect import CollectConfig, run
from dreamgym.train.policies import make_collect_policy


def raw_fps(game: str, seconds: float) -> float:
    spec = get_game(game)
    env = spec.make_real()
    frames, t0, ep = 0, time.time(), 0
    while time.time() - t0 < seconds:
        policy = make_collect_policy(spec, np.random.default_rng(ep))
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            obs, _, term, trunc, _ = env.step(policy(obs))
            frames += 1
            done = term or trunc
        ep += 1
    env.close()
    return frames / (time.time() - t0)


def main() -> None:
    game = sys.argv[1] if len(sys.argv) > 1 else "doom_take_cover"
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    episodes = {"doom_take_cover": 200, "car_racing": 6}[game]
    raw = raw_fps(game, 20)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        run(CollectConfig(game, episodes=episodes, workers=workers, min_frames=0), d)
        wall = time.time() - t0
        rows = data.read_manifest(d)
        frames = sum(r["frames"] for r in rows)
        nbytes = sum(r.get("bytes", 0) for r in rows)
    fps = frames / wall
    print(
        json.dumps(
            {
                "game": game,
                "workers": workers,
                "raw_fps_one_core": round(raw, 1),
                "collect_fps": round(fps, 1),
                "frames": frames,
                "kb_per_frame": round(nbytes / frames / 1024, 2),
            }
        )
    )
    print(
        f"{game}: raw {raw:.0f} frames/s on one core; collect {fps:.0f} frames/s with "
        f"{workers} workers; ratio per core used {fps / (raw * workers):.2f} (target >= 0.9); "
        f"{nbytes / frames / 1024:.2f} KB/frame on disk"
    )


if __name__ == "__main__":
    main()
