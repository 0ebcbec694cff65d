"""Worker processes that run real games, and never hang when one of them dies.

A game process a worker starts (ViZDoom's engine) inherits the worker's pipes, so
when a worker is killed the standard pool does not notice and waits forever.
``GamePool`` polls its workers' liveness instead: a dead worker raises
``WorkerDiedError`` within ``poll`` seconds, and the games left behind are killed.
The other way round, a worker whose parent is gone (killed by a signal that gave it
no time to close the pool) kills its games and exits within a second, so no
orphan goes on playing.

``open_pool`` picks the backend: ``local`` (``GamePool``) or ``ray``
(``dreamgym.ray_pool.RayPool``, the same interface on a Ray cluster; ``dreamgym.pools``
opens either).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context, util
from pathlib import Path


def _start_time(pid: int) -> str | None:
    """The start time of a live process (Linux /proc), to tell it from a reused pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every live descendant of ``pid`` (empty where /proc has none)."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            for kid in kids:
                start = _start_time(kid)
                if start is not None and kid not in found:
                    found[kid] = start
                    todo.append(kid)
    return found


def _kill_descendants() -> None:
    """Kill every process this one started (its games), and theirs."""
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _start_worker(parent: int, initializer, initargs) -> None:
    """A pool worker's set-up: watch the parent, kill its games on exit, then the caller's."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    util.Finalize(None, _kill_descendants, exitpriority=0)  # run as the worker exits normally
    if initializer is not None:
        initializer(*initargs)


def _exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """Once ``parent`` is gone (this process re-parented), kill this worker's games and exit."""
    while os.getppid() == parent:
        time.sleep(poll)
    _kill_descendants()
    os._exit(1)


class WorkerDiedError(RuntimeError):
    """A real-game worker process died (killed, out of memory) or could not start."""


class GamePool:
    """A process pool for real-game tasks with liveness polling and game clean-up."""

    def __init__(self, workers: int, initializer, initargs=(), poll: float = 1.0):
        if workers < 1:
            raise ValueError(f"workers: expected an integer >= 1, got {workers}")
        self.poll = poll
        self._died: str | None = None  # a worker's death, raised at the next wait
        self._games: dict[int, str] = {}  # processes the workers started (the games)
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),  # no fork of a process with torch threads
            initializer=_start_worker,
            initargs=(os.getpid(), initializer, initargs),
        )

    def submit(self, fn, *args) -> Future:
        """Run ``fn(*args)`` in a worker process; its future ends with the result."""
        return self._pool.submit(fn, *args)

    def _dead_worker(self) -> str | None:
        """Note every worker's game processes; describe the first worker that has died."""
        procs = dict(getattr(self._pool, "_processes", None) or {})
        dead = None
        for pid, proc in procs.items():
            if proc.is_alive():
                self._games.update(_descendants(pid))
            elif dead is None:
                dead = f"worker {pid} exited with code {proc.exitcode}"
        return dead

    def wait_first(self, pending: set[Future]) -> tuple[set[Future], set[Future]]:
        """Like ``wait(FIRST_COMPLETED)``, but a dead worker raises WorkerDiedError.

        Finished results are always handed back first; the death is raised on the
        next call, so no finished work is lost.
        """
        try:
            while True:
                if self._died:
                    raise BrokenProcessPool(self._died)
                done, pending = wait(pending, timeout=self.poll, return_when=FIRST_COMPLETED)
                broken = {
                    f for f in done
                    if not f.cancelled() and isinstance(f.exception(), BrokenProcessPool)
                }  # fmt: skip
                self._died = self._dead_worker() or (
                    str(next(iter(broken)).exception()) if broken else None
                )
                ok = done - broken  # results, or a task's own error for the caller to see
                if ok:
                    return ok, pending | broken
        except BrokenProcessPool as e:
            self.close(kill=True)
            raise WorkerDiedError(
                f"a real-game worker process died or could not start ({e}). It was killed, "
                "ran out of memory, or failed to create the game (see any error printed "
                "above); rerun to resume, with fewer workers if memory is short."
            ) from None

    def close(self, kill: bool = False) -> None:
        """Stop the workers (``kill``: at once) and any game process left behind."""
        self._dead_worker()
        if kill:
            for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                proc.kill()
        self._pool.shutdown(wait=not kill, cancel_futures=True)
        for pid, start in self._games.items():  # a game outlives a worker that was killed
            if _start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._games.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(kill=exc[0] is not None)
