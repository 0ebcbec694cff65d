"""Collection throughput: frames/s of `dreamgym collect` with W workers vs the raw game.

    python benchmarks/collect_throughput.py [GAME] [W] [--backend local|ray] [--repeats N]

``--backend local`` (the default) prints the raw game's frames/s on one core (policy +
preprocessing, no I/O), the collector's frames/s with W worker processes (writing
compressed shards), and the ratio per core used (target >= 0.9).

``--backend ray`` runs the same collection through Ray actors next to the local
backend, alternately, ``--repeats`` times each, and prints Ray's frames/s over the
local backend's (target >= 0.85 at 2 workers). A local Ray is started before the
clock starts (a cluster outlives its jobs); starting the actors and their games is
timed, as starting the local processes and theirs is. It then measures what each
episode costs the driver, the part that does not shrink as nodes are added: a Ray
task's round trip, and receiving and writing one shard, and from these the frames/s
at which one driver would be saturated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dreamgym import data
from dreamgym.games import get_game
from dreamgym.train.collect import CollectConfig, run
from dreamgym.train.policies import make_collect_policy

EPISODES = {"doom_take_cover": 200, "car_racing": 6}
"""Episodes of the local benchmark."""
RAY_EPISODES = {"doom_take_cover": 60, "car_racing": 4}
"""Episodes of each run of the Ray comparison (it runs 2 * repeats collections)."""


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


def collect_fps(game: str, workers: int, episodes: int, backend: str, seed: int = 0) -> dict:
    """One timed collection into a fresh folder: frames/s, frames, bytes."""
    with tempfile.TemporaryDirectory() as d:
        config = CollectConfig(
            game, episodes=episodes, workers=workers, min_frames=0, seed=seed, backend=backend
        )
        t0 = time.time()
        run(config, d)
        wall = time.time() - t0
        rows = data.read_manifest(d)
    frames = sum(r["frames"] for r in rows)
    return {"fps": frames / wall, "frames": frames, "bytes": sum(r.get("bytes", 0) for r in rows)}


def local_report(game: str, workers: int) -> None:
    """The local backend against the raw game (the original benchmark)."""
    raw = raw_fps(game, 20)
    got = collect_fps(game, workers, EPISODES[game], "local")
    fps, frames, nbytes = got["fps"], got["frames"], got["bytes"]
    print(json.dumps({"game": game, "workers": workers, "raw_fps_one_core": round(raw, 1),
                      "collect_fps": round(fps, 1), "frames": frames,
                      "kb_per_frame": round(nbytes / frames / 1024, 2)}))  # fmt: skip
    print(
        f"{game}: raw {raw:.0f} frames/s on one core; collect {fps:.0f} frames/s with "
        f"{workers} workers; ratio per core used {fps / (raw * workers):.2f} (target >= 0.9); "
        f"{nbytes / frames / 1024:.2f} KB/frame on disk"
    )


def driver_costs(game: str, samples: int = 50) -> dict:
    """Seconds the driver spends per episode: a Ray task's round trip (a no-op actor call)
    and receiving plus writing one shard of a typical episode."""
    import ray

    from dreamgym.ray_pool import GameActor
    from dreamgym.train.collect import _init_worker, _rollout

    actor = ray.remote(num_cpus=1)(GameActor).remote(_init_worker, game, 1000)
    ray.get(actor.pid.remote())  # started, game made
    t0 = time.perf_counter()
    for _ in range(samples):
        ray.get(actor.pid.remote())
    round_trip = (time.perf_counter() - t0) / samples
    config = CollectConfig(game, min_frames=0)
    result = ray.get(actor.run.remote(_rollout, (game, 0, 0, None, 0, config)))
    ray.kill(actor)
    ref = ray.put(result)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        for i in range(samples // 5):
            got = ray.get(ref)
            data.write_shard(Path(d), i, got["blob"], got["frames"], got["return"])
        land = (time.perf_counter() - t0) / (samples // 5)
    return {"round_trip_s": round_trip, "land_s": land, "frames": result["frames"],
            "shard_bytes": len(result["blob"])}  # fmt: skip


def ray_report(game: str, workers: int, repeats: int, episodes: int) -> None:
    """Ray next to the local backend, alternately, then the driver's cost per episode."""
    from dreamgym.ray_pool import connect

    connect(None, max(workers, 2))
    fps = {"local": [], "ray": []}
    for r in range(repeats):
        for backend in ("local", "ray"):
            fps[backend].append(collect_fps(game, workers, episodes, backend, seed=1000 * r)["fps"])
            print(
                f"  run {r + 1}/{repeats} {backend:5s} {fps[backend][-1]:7.0f} frames/s", flush=True
            )
    ratios = [ray / local for local, ray in zip(fps["local"], fps["ray"], strict=True)]
    cost = driver_costs(game)
    per_episode = cost["round_trip_s"] + cost["land_s"]
    ceiling = cost["frames"] / per_episode
    report = {"game": game, "workers": workers, "episodes_per_run": episodes,
              "local_fps": [round(x) for x in fps["local"]],
              "ray_fps": [round(x) for x in fps["ray"]],
              "ratio_median": round(statistics.median(ratios), 3), **cost,
              "driver_ceiling_fps": round(ceiling)}  # fmt: skip
    print(json.dumps(report))
    print(
        f"{game}, {workers} workers, {repeats} runs each of {episodes} episodes: local "
        f"{statistics.median(fps['local']):.0f} frames/s, ray {statistics.median(fps['ray']):.0f} "
        f"frames/s; ratio ray/local median {statistics.median(ratios):.2f} (runs: "
        f"{', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.85)\n"
        f"driver per episode: {cost['round_trip_s'] * 1e3:.2f} ms task round trip + "
        f"{cost['land_s'] * 1e3:.2f} ms receiving and writing a {cost['shard_bytes'] / 1e6:.2f} MB "
        f"shard of {cost['frames']} frames; one driver saturates near {ceiling:,.0f} frames/s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("game", nargs="?", default="doom_take_cover", choices=sorted(EPISODES))
    p.add_argument("workers", nargs="?", type=int, default=2)
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--repeats", type=int, default=3, help="runs of each backend (ray)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per run (ray)")
    args = p.parse_args()
    if args.backend == "local":
        local_report(args.game, args.workers)
    else:
        ray_report(args.game, args.workers, args.repeats, args.episodes or RAY_EPISODES[args.game])


if __name__ == "__main__":
    main()
