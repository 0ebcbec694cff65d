"""Real-game workers on a Ray cluster, with ``GamePool``'s interface.

``RayPool`` keeps one Ray actor per worker, each holding one game made by the same
initializer the local pool runs in its processes, and hands out episode tasks from
a queue in this process: ``submit`` returns a ``concurrent.futures.Future`` and
``wait_first`` returns the futures that finished. An actor that dies (killed, out
of memory, its node lost) costs only the tasks it held: they go back to the queue
and run again on a new actor, up to ``retries`` times each. A task's own error is
its future's exception, as with the local pool. Ray is imported only here, and only
when a pool is opened.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from dreamgym.workers import WorkerDiedError, _descendants, _start_time

RAY_EXTRA = "pip install 'dreamgym[ray]'"
"""How to install Ray for ``--backend ray``."""
DEPTH = 2
"""Tasks in flight on each actor: one running, one waiting, so an actor never idles."""


def import_ray():
    """The ``ray`` module, or an ImportError that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"--backend ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a ``HOST:PORT`` (or ``ray://HOST:PORT``) where nothing answers,
    before a stage writes anything: Ray itself would retry for minutes."""
    if address == "auto":
        return
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address: expected HOST:PORT of a Ray cluster, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ValueError(
            f"--ray-address: nothing answers at {address} ({e.strerror or e}); start the "
            "cluster's head with `ray start --head`, or give the address it printed"
        ) from None


def connect(address: str | None, num_cpus: int) -> bool:
    """Join the Ray cluster at ``address``, or start a local Ray of ``num_cpus`` CPUs
    (None); return whether this call started it. A process already joined stays so."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        # Workers in this process's process group: killing the job's group ends them
        # and their games too, as with local workers.
        same_group = {"process_group_cleanup_enabled": False}
        ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=False,
            _system_config=same_group, **quiet,
        )  # fmt: skip
    else:
        ray.init(address=address, **quiet)
    return True


class GameActor:
    """One worker's game: ``initializer(*initargs)`` at start, then ``run(fn, args)``
    calls ``fn(*args)`` in this process, where the initializer left its game."""

    def __init__(self, initializer, *initargs):
        initializer(*initargs)

    def run(self, fn, args):
        """``fn(*args)``, in the actor's process."""
        return fn(*args)

    def pid(self) -> int:
        """The actor's process id."""
        return os.getpid()

    def games(self) -> tuple[str, dict[int, str]]:
        """(this machine's id, pid -> start time of the processes the game started)."""
        return machine_id(), _descendants(os.getpid())


def machine_id() -> str:
    """The host name and boot id: the same on every process of one running machine."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


@dataclass
class _Task:
    future: Future
    fn: object
    args: tuple
    attempts: int = 0
    slot: int = -1  # the actor it was handed to
    actor: object = field(default=None, repr=False)


class RayPool:
    """``GamePool``'s interface on Ray: ``workers`` actors, each holding one game.

    ``address``: a running cluster (``ray start --head`` prints it); None starts a
    local Ray with the machine's CPUs (``workers``, if more), shut down again by
    ``close``; a process already joined to Ray keeps its Ray. A task whose actor
    died runs again on a new actor, up to ``retries`` times; then ``wait_first``
    raises ``WorkerDiedError``.
    """

    def __init__(
        self, workers: int, initializer, initargs=(), poll: float = 1.0,
        address: str | None = None, retries: int = 3,
    ):  # fmt: skip
        if workers < 1:
            raise ValueError(f"workers: expected an integer >= 1, got {workers}")
        self.ray = import_ray()
        self.poll, self.retries = poll, retries
        self.retried = 0
        """Tasks that ran again because their actor died."""
        self._started = connect(address, max(workers, os.cpu_count() or 1))
        self._cls = self.ray.remote(num_cpus=1, max_restarts=0)(GameActor)
        self._init = (initializer, [self.ray.put(a) for a in initargs])  # shipped once
        self._games: dict = {}  # actor -> ref of its ``games()``
        self._actors = [self._new_actor() for _ in range(workers)]
        self._load = [0] * workers
        self._queue: deque[_Task] = deque()
        self._running: dict = {}  # ObjectRef -> _Task

    def _new_actor(self):
        actor = self._cls.remote(self._init[0], *self._init[1])  # refs: resolved by Ray
        self._games[actor] = actor.games.remote()
        return actor

    def _end_games(self, actor) -> None:
        """Kill the game processes a dead or killed actor on this machine left behind (a
        killed process's children outlive it); another machine's raylet sees to its own."""
        ref = self._games.pop(actor, None)
        if ref is None or not self.ray.wait([ref], timeout=0)[0]:
            return
        try:
            machine, games = self.ray.get(ref)
        except Exception:  # noqa: BLE001 - the actor never started its game
            return
        if machine != machine_id():
            return
        for pid, start in games.items():
            if _start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def submit(self, fn, *args) -> Future:
        """Queue ``fn(*args)`` for the next free actor; its future ends with the result."""
        task = _Task(Future(), fn, args)
        self._queue.append(task)
        return task.future

    def _dispatch(self) -> None:
        """Hand queued tasks to actors with fewer than ``DEPTH`` in flight."""
        while self._queue:
            slot = min(range(len(self._actors)), key=self._load.__getitem__)
            if self._load[slot] >= DEPTH:
                return
            task = self._queue.popleft()
            if task.future.cancelled():
                continue
            task.slot, task.actor = slot, self._actors[slot]
            self._load[slot] += 1
            self._running[task.actor.run.remote(task.fn, task.args)] = task

    def wait_first(self, pending: set[Future]) -> tuple[set[Future], set[Future]]:
        """Like ``GamePool.wait_first``: (finished futures, the rest), at least one finished;
        a task whose actor died runs again instead of failing."""
        while True:
            self._dispatch()
            done = {f for f in pending if f.done()}
            if done:
                return done, pending - done
            if not self._running:
                raise RuntimeError("wait_first: nothing pending was submitted to this pool")
            refs = list(self._running)
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=self.poll)
            if ready:
                ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self._finish(ref)

    def _finish(self, ref) -> None:
        """Set a finished task's future, or queue the task again if its actor died."""
        from ray.exceptions import RayActorError, RayTaskError

        task = self._running.pop(ref)
        if self._actors[task.slot] is task.actor:
            self._load[task.slot] -= 1
        try:
            result = self.ray.get(ref)
        except RayActorError as e:
            self._actor_died(task, e)
            return
        except RayTaskError as e:  # the task's own error, for the caller to see
            if not task.future.cancelled():
                task.future.set_exception(e.as_instanceof_cause())
            return
        if not task.future.cancelled():
            task.future.set_result(result)

    def _actor_died(self, task: _Task, error: Exception) -> None:
        """Replace ``task``'s dead actor (once) and queue the task again, first in line."""
        cause = _last_line(error)
        if getattr(error, "actor_init_failed", False):  # the same start fails again: stop now
            self.close(kill=True)
            raise WorkerDiedError(f"a Ray worker could not start its game: {cause}")
        if self._actors[task.slot] is task.actor:  # the first of its tasks to report
            self.ray.kill(task.actor, no_restart=True)
            self._end_games(task.actor)
            self._actors[task.slot], self._load[task.slot] = self._new_actor(), 0
            print(f"a Ray worker died ({cause}); its tasks run again", file=sys.stderr, flush=True)
        task.attempts += 1
        if task.attempts > self.retries:
            self.close(kill=True)
            raise WorkerDiedError(
                f"a real-game task failed {task.attempts} times because its Ray worker died "
                f"({cause}); check the workers' memory and that every node has the game "
                "installed, then rerun to resume"
            )
        self.retried += 1
        self._queue.appendleft(task)

    def close(self, kill: bool = False) -> None:
        """End the actors (``kill``: at once; else each closes its game) and a local Ray
        this pool started."""
        ray = self.ray
        if ray.is_initialized() and self._actors:
            if kill:
                for actor in self._actors:
                    ray.kill(actor, no_restart=True)
                    self._end_games(actor)
            else:
                ends = [actor.__ray_terminate__.remote() for actor in self._actors]
                ray.wait(ends, num_returns=len(ends), timeout=30)
        self._actors, self._running, self._queue = [], {}, deque()
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(kill=exc[0] is not None)


def _last_line(error: Exception) -> str:
    """The last line of an error's text that says something (a traceback's own error)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip().strip("^~ ")]
    line = lines[-1] if lines else type(error).__name__
    return line.split(" Some common causes")[0][:300]


__all__ = [
    "RayPool",
    "GameActor",
    "connect",
    "check_address",
    "import_ray",
    "machine_id",
    "RAY_EXTRA",
    "DEPTH",
]
