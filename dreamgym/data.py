"""Rollout shards: one compressed ``.npz`` per episode, written atomically, read streaming.

An episode of T steps holds ``frames`` (T, 64, 64, 3) uint8 — the observation
before each action — ``actions`` (T, A) float32 (the env action), ``rewards`` (T,)
float32 and ``terminated`` (T,) bool (True only on a step that ended the game;
a truncated episode has no True). ``manifest.jsonl`` lists every finished
episode with its frame count and sha256; it can be rebuilt from the shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dreamgym._io import atomic_path, read_jsonl

EPISODES_DIR = "episodes"
MANIFEST = "manifest.jsonl"
FIELDS = ("frames", "actions", "rewards", "terminated")


RECOLLECT = "rerun `dreamgym collect` on this run: it sets bad shards aside and recollects them"


class ShardError(ValueError):
    """A shard is unreadable, truncated, inconsistent or not the one the manifest lists."""


def shard_name(index: int) -> str:
    return f"ep_{index:07d}.npz"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode_episode(index: int, episode: dict[str, np.ndarray]) -> bytes:
    """One episode as the bytes of its shard (deflate level 1, members dated 1980).

    The same episode gives the same bytes wherever and whenever it is encoded, so a
    shard written by a worker or by the process that received it is the same file.
    """
    T = len(episode["frames"])
    for k in FIELDS:
        if len(episode[k]) != T:
            raise ShardError(f"episode {index}: {k} has {len(episode[k])} rows, frames have {T}")
    buf = io.BytesIO()
    # Deflate level 1: ~4x faster than numpy's default level for ~7% more disk,
    # which keeps the writer from slowing the game down.
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for k in FIELDS:
            with z.open(f"{k}.npy", "w") as member:  # dated 1980-01-01, as every member
                arr = np.ascontiguousarray(episode[k])
                np.lib.format.write_array(member, arr, allow_pickle=False)
    return buf.getvalue()


def write_shard(folder: Path, index: int, blob: bytes, frames: int, episode_return: float) -> dict:
    """Write a shard's bytes atomically (temporary file, fsync, rename); return its
    manifest row (``frames``: the episode's length, ``episode_return``: its rewards' sum)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / shard_name(index)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    return {
        "index": index,
        "file": path.name,
        "frames": int(frames),
        "bytes": len(blob),
        "return": float(episode_return),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }


def write_episode(folder: Path, index: int, episode: dict[str, np.ndarray]) -> dict:
    """Write one episode atomically (temporary file, fsync, rename); return its manifest row."""
    blob = encode_episode(index, episode)
    T, episode_return = len(episode["frames"]), float(np.sum(episode["rewards"]))
    return write_shard(folder, index, blob, T, episode_return)


def read_episode(path: Path, fields=FIELDS, sha: str | None = None) -> dict[str, np.ndarray]:
    """Read a shard (no pickle); a truncated or inconsistent file raises ShardError naming it.

    ``sha``: the sha256 the manifest recorded; the bytes read are checked against it.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ShardError(f"{path}: unreadable shard ({e.strerror or e}); {RECOLLECT}") from None
    if sha is not None and hashlib.sha256(raw).hexdigest() != sha:
        raise ShardError(
            f"{path}: sha256 differs from {MANIFEST} (replaced or altered); {RECOLLECT}"
        )
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            ep = {k: z[k] for k in fields}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ShardError(f"{path}: unreadable shard ({e}); {RECOLLECT}") from None
    lengths = {k: len(v) for k, v in ep.items()}
    if len(set(lengths.values())) != 1:
        raise ShardError(f"{path}: fields of different lengths {lengths}; {RECOLLECT}")
    return ep


def read_manifest(run_dir: Path) -> list[dict]:
    """Manifest rows; a torn last line (killed mid-append) is ignored."""
    return read_jsonl(Path(run_dir) / MANIFEST)


def append_manifest(run_dir: Path, row: dict) -> None:
    """Append one episode's row to the run's ``manifest.jsonl`` and flush it to disk."""
    with open(Path(run_dir) / MANIFEST, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def kept_rows(run_dir: Path) -> list[dict]:
    """Manifest rows of the kept episodes, in index order."""
    rows = [r for r in read_manifest(run_dir) if not r.get("dropped")]
    return sorted(rows, key=lambda r: r["index"])


def kept_episodes(run_dir: Path) -> list[Path]:
    """Shards listed in the manifest (and present), in index order."""
    folder = Path(run_dir) / EPISODES_DIR
    return [folder / r["file"] for r in kept_rows(run_dir)]


def _problem(path: Path, row: dict) -> str | None:
    if not path.exists():
        return f"{path}: listed in {MANIFEST} but missing"
    if (
        path.stat().st_size != row.get("bytes", path.stat().st_size)
        or sha256(path) != row["sha256"]
    ):
        return f"{path}: sha256 differs from {MANIFEST}"
    return None


def verify(run_dir: Path) -> list[str]:
    """Check every manifest row against its shard's sha256; return the problems found."""
    folder = Path(run_dir) / EPISODES_DIR
    return [p for r in kept_rows(run_dir) if (p := _problem(folder / r["file"], r))]


def reconcile(run_dir: Path) -> list[str]:
    """Mark the kept rows whose shard is missing or altered as dropped (the file, if any, is
    renamed ``*.bad``), so that collect recollects them; return the problems found."""
    run_dir = Path(run_dir)
    folder = run_dir / EPISODES_DIR
    rows, problems = read_manifest(run_dir), []
    for i, row in enumerate(rows):
        problem = None if row.get("dropped") else _problem(folder / row["file"], row)
        if problem is None:
            continue
        problems.append(problem)
        path = folder / row["file"]
        if path.exists():
            os.replace(path, path.with_name(path.name + ".bad"))
        rows[i] = {"index": row["index"], "frames": row["frames"], "dropped": True, "bad": problem}
    if problems:
        with atomic_path(run_dir / MANIFEST) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return problems


def shards_digest(rows: list[dict]) -> str:
    """sha256 of the (file, sha256) pairs of manifest rows, in order: the data's identity."""
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['file']}:{r['sha256']}\n".encode())
    return h.hexdigest()


def iter_frame_batches(
    paths: list[Path],
    batch_size: int,
    rng: np.random.Generator,
    buffer_episodes: int = 32,
) -> Iterator[np.ndarray]:
    """Shuffled (B, 64, 64, 3) uint8 batches from the shards, one pass, bounded memory.

    At most ``buffer_episodes`` episodes are in memory at once: episodes are read
    in random order into a buffer whose frames are shuffled together. Every frame
    is yielded exactly once: frames left over from a buffer join the next one, and
    the last batch may be smaller than ``batch_size``.
    """
    order = rng.permutation(len(paths))
    carry = []  # < batch_size frames left over from the previous buffer
    for start in range(0, len(order), buffer_episodes):
        chunk = carry + [
            read_episode(paths[i], ("frames",))["frames"]
            for i in order[start : start + buffer_episodes]
        ]
        frames = np.concatenate(chunk)
        del chunk
        perm = rng.permutation(len(frames))
        n_full = len(perm) - len(perm) % batch_size
        for b in range(0, n_full, batch_size):
            yield frames[perm[b : b + batch_size]]
        carry = [frames[perm[n_full:]]]
    if carry and len(carry[0]):
        yield carry[0]


__all__ = [
    "encode_episode", "write_shard", "write_episode", "read_episode", "read_manifest",
    "append_manifest", "kept_rows", "kept_episodes", "verify", "reconcile", "shards_digest",
    "iter_frame_batches", "ShardError",
]  # fmt: skip
