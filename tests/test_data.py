"""Rollout shards: atomic write, streaming read, manifest, integrity, bounded-memory batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dreamgym import data


def make_episode(index: int, T: int, action_dim: int = 1) -> dict[str, np.ndarray]:
    """An episode whose frames are labelled: pixel (0, 0) = (index, t // 256, t % 256)."""
    rng = np.random.default_rng(index)
    frames = rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8)
    frames[:, 0, 0] = np.stack([np.full(T, index), np.arange(T) // 256, np.arange(T) % 256], 1)
    terminated = np.zeros(T, bool)
    terminated[-1] = True
    return {
        "frames": frames,
        "actions": rng.uniform(-1, 1, (T, action_dim)).astype(np.float32),
        "rewards": np.ones(T, np.float32),
        "terminated": terminated,
    }


def frame_ids(batch: np.ndarray) -> list[tuple[int, int]]:
    px = batch[:, 0, 0].astype(int)
    return [(e, hi * 256 + lo) for e, hi, lo in px]


@pytest.fixture
def run_dir(tmp_path) -> tuple[Path, dict[int, int]]:
    """A run directory with 7 episodes of varied length, listed in the manifest."""
    lengths = {i: 5 + 3 * i for i in range(7)}
    for i, T in lengths.items():
        row = data.write_episode(tmp_path / data.EPISODES_DIR, i, make_episode(i, T))
        data.append_manifest(tmp_path, row)
    return tmp_path, lengths


def test_write_read_round_trip(tmp_path):
    ep = make_episode(3, 12, action_dim=3)
    row = data.write_episode(tmp_path, 3, ep)
    path = tmp_path / row["file"]
    assert row["index"] == 3 and row["frames"] == 12 and row["return"] == 12.0
    assert row["bytes"] == path.stat().st_size and row["sha256"] == data.sha256(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [row["file"]]  # no temp file left
    back = data.read_episode(path)
    assert set(back) == set(data.FIELDS)
    for k in data.FIELDS:
        np.testing.assert_array_equal(back[k], ep[k])
        assert back[k].dtype == ep[k].dtype
    only = data.read_episode(path, ("frames",))
    assert set(only) == {"frames"}


def test_a_shard_encoded_elsewhere_is_the_file_a_worker_writes(tmp_path):
    """A Ray worker encodes the shard and the driver writes it: the same bytes and row as
    a local worker's ``write_episode``, however often and whenever it is encoded."""
    ep = make_episode(5, 9, action_dim=3)
    blob = data.encode_episode(5, ep)
    assert data.encode_episode(5, {k: v.copy() for k, v in ep.items()}) == blob
    local = data.write_episode(tmp_path / "local", 5, ep)
    landed = data.write_shard(tmp_path / "driver", 5, blob, 9, float(ep["rewards"].sum()))
    assert landed == local
    written = [(tmp_path / d / local["file"]).read_bytes() for d in ("local", "driver")]
    assert written[0] == written[1] == blob
    assert sorted(p.name for p in (tmp_path / "driver").iterdir()) == [local["file"]]


def test_write_rejects_fields_of_different_lengths(tmp_path):
    ep = make_episode(0, 6)
    ep["rewards"] = ep["rewards"][:5]
    with pytest.raises(data.ShardError, match="rewards has 5 rows"):
        data.write_episode(tmp_path, 0, ep)
    assert not any(tmp_path.iterdir())


def test_manifest_and_kept_episodes(run_dir):
    folder, lengths = run_dir
    data.append_manifest(folder, {"index": 7, "frames": 3, "dropped": True})
    rows = data.read_manifest(folder)
    assert [r["index"] for r in rows] == list(range(8))
    assert [r["frames"] for r in rows[:7]] == list(lengths.values())
    kept = data.kept_episodes(folder)
    assert [p.name for p in kept] == [data.shard_name(i) for i in range(7)]
    assert data.verify(folder) == []


def test_manifest_ignores_a_torn_last_line(run_dir):
    folder, _ = run_dir
    with open(folder / data.MANIFEST, "a") as f:
        f.write('{"index": 7, "fil')
    assert len(data.read_manifest(folder)) == 7


def test_missing_manifest_is_empty(tmp_path):
    assert data.read_manifest(tmp_path) == [] and data.kept_episodes(tmp_path) == []


def test_verify_finds_changed_and_missing_shards(run_dir):
    folder, _ = run_dir
    shards = folder / data.EPISODES_DIR
    data.write_episode(shards, 2, make_episode(99, 4))  # same name, other content
    (shards / data.shard_name(5)).unlink()
    problems = data.verify(folder)
    assert len(problems) == 2
    assert data.shard_name(2) in problems[0] and "sha256" in problems[0]
    assert data.shard_name(5) in problems[1] and "missing" in problems[1]


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.0])
def test_truncated_shard_raises_shard_error_naming_the_file(tmp_path, cut):
    row = data.write_episode(tmp_path, 0, make_episode(0, 20))
    path = tmp_path / row["file"]
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(data.ShardError, match=row["file"]):
        data.read_episode(path)


def test_shard_with_a_missing_field(tmp_path):
    path = tmp_path / "ep.npz"
    ep = make_episode(0, 4)
    np.savez_compressed(path, frames=ep["frames"], actions=ep["actions"])
    with pytest.raises(data.ShardError, match="ep.npz"):
        data.read_episode(path)


def test_shard_with_inconsistent_lengths(tmp_path):
    path = tmp_path / "ep.npz"
    ep = make_episode(0, 4)
    ep["terminated"] = ep["terminated"][:3]
    np.savez_compressed(path, **ep)
    with pytest.raises(data.ShardError, match="different lengths"):
        data.read_episode(path)


def test_shard_is_read_without_pickle(tmp_path):
    path = tmp_path / "ep.npz"
    ep = make_episode(0, 4)
    np.savez(path, **{**ep, "rewards": np.array([object()] * 4, dtype=object)})
    with pytest.raises(data.ShardError, match="ep.npz"):
        data.read_episode(path)


@pytest.mark.parametrize("batch_size, buffer_episodes", [(4, 2), (5, 3), (64, 32), (1, 1)])
def test_iter_frame_batches_covers_every_frame_once(run_dir, batch_size, buffer_episodes):
    folder, lengths = run_dir
    paths = data.kept_episodes(folder)
    rng = np.random.default_rng(0)
    batches = list(data.iter_frame_batches(paths, batch_size, rng, buffer_episodes))
    assert all(b.shape[1:] == (64, 64, 3) and b.dtype == np.uint8 for b in batches)
    assert all(len(b) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]) <= batch_size
    seen = [i for b in batches for i in frame_ids(b)]
    expected = [(e, t) for e, T in lengths.items() for t in range(T)]
    assert sorted(seen) == expected  # every frame exactly once
    assert seen != expected  # and shuffled


def test_iter_frame_batches_is_reproducible(run_dir):
    paths = data.kept_episodes(run_dir[0])
    a = list(data.iter_frame_batches(paths, 8, np.random.default_rng(1), 3))
    b = list(data.iter_frame_batches(paths, 8, np.random.default_rng(1), 3))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_iter_frame_batches_holds_a_bounded_number_of_episodes(run_dir, monkeypatch):
    paths = data.kept_episodes(run_dir[0])
    reads = []
    real_read = data.read_episode
    monkeypatch.setattr(
        data, "read_episode", lambda p, f=data.FIELDS: reads.append(p) or real_read(p, f)
    )
    it = data.iter_frame_batches(paths, 2, np.random.default_rng(0), buffer_episodes=2)
    next(it)
    assert len(reads) == 2  # only one buffer's worth read before the first batch
    rest = list(it)
    assert sorted(reads) == sorted(paths)  # each shard read once over the pass
    assert len(rest) > 0


def test_manifest_rows_are_json_lines(run_dir):
    lines = (run_dir[0] / data.MANIFEST).read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_a_full_disk_names_the_file_and_keeps_what_was_written(tmp_path, monkeypatch):
    import errno

    from dreamgym import _io

    folder = tmp_path / "episodes"
    ep = {
        "frames": np.zeros((3, 64, 64, 3), np.uint8),
        "actions": np.zeros((3, 1), np.float32),
        "rewards": np.ones(3, np.float32),
        "terminated": np.zeros(3, bool),
    }
    first = data.write_episode(folder, 0, ep)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    # the shard is encoded in memory, then written: the disk fills as it is written out
    monkeypatch.setattr(data.os, "fsync", full)
    with pytest.raises(_io.WriteError, match=r"ep_0000001\.npz.*No space left"):
        data.write_episode(folder, 1, ep)
    assert sorted(p.name for p in folder.iterdir()) == [first["file"]]  # no temporary left
    assert data.sha256(folder / first["file"]) == first["sha256"]
