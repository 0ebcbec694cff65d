"""V's training rate and peak memory at two dataset sizes: memory must not grow with data.

Each measurement runs `fit_vae` in a fresh process on a run directory of N episodes
(shards copied from a small real collection) and reads the process's peak RSS.
Usage: python benchmarks/vae_training.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dreamgym import data
from dreamgym.train.collect import CollectConfig, run

CHILD = """
import json, resource, sys, time
from dreamgym.train.fit_vae import FitVAEConfig, run
t0 = time.time()
cfg = FitVAEConfig(epochs=float(sys.argv[2]), batch_size=100, threads=2, checkpoint_every=10**9)
run(cfg, sys.argv[1])
rows = [json.loads(x) for x in open(sys.argv[1] + '/vae/metrics.jsonl')]
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "frames_per_s": rows[-1]["frames_per_s"], "seconds": time.time() - t0}))
"""


def replicate(src: Path, dst: Path, copies: int) -> int:
    """A run directory holding ``copies`` x the source episodes (same frames, new indices)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("vae", "manifest.jsonl", "episodes"))
    (dst / data.EPISODES_DIR).mkdir()
    rows = [r for r in data.read_manifest(src) if not r.get("dropped")]
    i = 0
    for _ in range(copies):
        for r in rows:
            name = data.shard_name(i)
            shutil.copy(src / data.EPISODES_DIR / r["file"], dst / data.EPISODES_DIR / name)
            data.append_manifest(dst, {**r, "index": i, "file": name})
            i += 1
    return i


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        base = Path(d) / "base"
        run(CollectConfig("doom_take_cover", episodes=20, workers=2), base)
        results = []
        for copies in (1, 8):
            rd = Path(d) / f"x{copies}"
            n = replicate(base, rd, copies)
            frames = sum(r["frames"] for r in data.read_manifest(rd))
            # The same number of training steps at both sizes: a fixed slice of an epoch.
            epochs = 30 * 100 / frames
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(rd), str(epochs)],
                capture_output=True,
                text=True,
                check=True,
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res.update(episodes=n, frames=frames)
            results.append(res)
            print(json.dumps(res))
    small, big = results
    print(
        f"V training: {small['frames_per_s']:.0f} frames/s ({small['frames']} frames), "
        f"{big['frames_per_s']:.0f} frames/s ({big['frames']} frames); peak RSS "
        f"{small['peak_rss_mb']:.0f} MB vs {big['peak_rss_mb']:.0f} MB: ratio "
        f"{big['peak_rss_mb'] / small['peak_rss_mb']:.2f} for "
        f"{big['frames'] / small['frames']:.0f}x "
        "the data (bounded memory: ~1)"
    )


if __name__ == "__main__":
    main()
