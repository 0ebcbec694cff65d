"""M's training windows: where they start, and that long episodes show M their end."""

from __future__ import annotations

import numpy as np
import torch

from dreamgym.train.fit_mdnrnn import SequenceSampler


def latents(lengths: list[int], z_dim: int = 4) -> dict:
    n = sum(lengths)
    terminated = np.zeros(n, bool)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    terminated[offsets[1:] - 1] = True
    frame = np.arange(n, dtype=np.float32)
    return {
        "mu": np.repeat(frame[:, None], z_dim, 1),  # z carries the frame's index
        "logvar": np.full((n, z_dim), -30.0, np.float32),  # no noise
        "actions": np.zeros((n, 1), np.float32),
        "rewards": np.ones(n, np.float32),
        "terminated": terminated,
        "offsets": offsets,
    }


def test_windows_start_at_the_first_frame_end_at_the_last_or_lie_anywhere():
    lat = latents([1000, 40])  # one episode longer than the window, one shorter
    sampler = SequenceSampler(lat, lambda a: a, seq_len=100, seed=0)
    starts, ends_with_death, short_whole = [], 0, 0
    for _ in range(50):
        b = sampler.batch(64, "cpu")
        for z, done, valid in zip(b["z"], b["done"], b["valid"], strict=True):
            frames = z[valid][:, 0].round().long()
            assert torch.equal(frames, torch.arange(frames[0], frames[0] + len(frames)))
            if frames[0] >= 1000:  # the short episode: always whole, always ending in death
                short_whole += 1
                assert len(frames) == 40 and done[valid][-1] == 1 and done[valid][:-1].sum() == 0
                continue
            assert len(frames) == 100 and frames[-1] < 1000
            starts.append(int(frames[0]))
            ends_with_death += int(done[valid][-1] == 1)
    starts = np.array(starts)
    assert short_whole > 0
    share_first = np.mean(starts == 0)
    share_last = ends_with_death / len(starts)
    assert 0.4 < share_first < 0.6  # half start with the episode, as dreams do
    assert 0.2 < share_last < 0.3  # a quarter show M the death of a long episode
    middle = starts[(starts > 0) & (starts < 900)]
    assert len(middle) > 0.15 * len(starts) and middle.max() > 600  # the rest spread out
