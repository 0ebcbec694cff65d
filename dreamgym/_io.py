"""Atomic file writes: write a temporary file, then rename; a failed write leaves nothing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriteError(OSError):
    """A file could not be written (a full disk, most often); nothing earlier was touched."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` once written.

    On failure the temporary file is removed and ``WriteError`` names ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(
            f"{path}: could not be written ({e.strerror or e}); free disk space and rerun "
            "the same command: it resumes, and what was already written is intact"
        ) from e


METRICS_FILE = "metrics.jsonl"
"""The metrics log (JSON lines) of a training stage, in its folder."""


def log_metrics(path: str | os.PathLike, **row) -> None:
    """Append one JSON line (with the wall time) to a metrics file."""
    row = {"time": round(time.time(), 3), **row}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file (none if it is missing); a line torn by a kill is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
