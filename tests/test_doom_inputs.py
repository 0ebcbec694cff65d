"""benchmarks/doom_inputs.py: PPO on part of Doom's observation, scored for real the same way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "doom_inputs.py"


@pytest.mark.slow
def test_an_agent_of_stacked_codes_trains_and_plays_the_real_game_seen_the_same_way(tmp_path):
    pytest.importorskip("vizdoom")
    pytest.importorskip("stable_baselines3")
    out = tmp_path / "zh2"
    args = ["--keep", "zh", "--stack", "2", "--timesteps", "2048", "--episodes", "2",
            "--real-seed", "5", "--out", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["keep"] == "zh" and report["stack"] == 2 and report["real_seeds"] == [5, 6]
    assert len(report["real"]["returns"]) == 2 and report["real"]["mean"] > 0
    assert (tmp_path / "zh2.zip").is_file()
    bad = subprocess.run([sys.executable, str(SCRIPT), "--stack", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "--stack" in bad.stderr.splitlines()[-1]
