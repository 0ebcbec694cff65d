"""Where real-game workers run: ``local`` processes (``dreamgym.workers.GamePool``) or
actors on a Ray cluster (``dreamgym.ray_pool.RayPool``), behind one function."""

from __future__ import annotations

from dreamgym.ray_pool import RayPool, check_address, import_ray
from dreamgym.workers import GamePool

BACKENDS = ("local", "ray")
"""Where real-game workers run: processes on this machine, or actors on a Ray cluster."""


def check_backend(backend: str, ray_address: str | None = None) -> None:
    """A known backend, an address only with ``ray`` (one that answers), and Ray
    installed for ``ray``."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if ray_address is not None and backend != "ray":
        raise ValueError("--ray-address: a Ray cluster's address goes with --backend ray")
    if ray_address is not None and not str(ray_address).strip():
        raise ValueError("--ray-address: expected HOST:PORT of a Ray cluster, got an empty string")
    if backend == "ray":
        try:
            import_ray()
        except ImportError as e:
            raise ValueError(str(e)) from None
        if ray_address is not None:
            check_address(ray_address)


def open_pool(
    backend: str, workers: int, initializer, initargs=(), poll: float = 1.0,
    ray_address: str | None = None,
):  # fmt: skip
    """A pool of ``workers`` real-game workers, each set up by ``initializer(*initargs)``:
    ``GamePool`` (``local``) or ``RayPool`` (``ray``, on the cluster at ``ray_address``,
    None: a local Ray). Both have ``submit``, ``wait_first`` and ``close``."""
    check_backend(backend, ray_address)
    if backend == "local":
        return GamePool(workers, initializer, initargs, poll)
    return RayPool(workers, initializer, initargs, poll, address=ray_address)


def run_all(pool, fn, tasks, progress=None) -> list:
    """``fn(*task)`` of every task in ``tasks``, run in ``pool`` (``open_pool``'s or a
    ``GamePool``); the results in the tasks' order. ``progress(1)`` is called as each
    one ends."""
    futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
    out = [None] * len(futures)
    pending = set(futures)
    while pending:
        done, pending = pool.wait_first(pending)
        for fut in done:
            out[futures[fut]] = fut.result()
            if progress is not None:
                progress(1)
    return out


def play_each(env, play, seeds, progress=None) -> list:
    """``play(env, seed)`` for every seed, one after another in this process, then
    ``env.close()`` (also on an error); ``progress(1)`` is called as each one ends."""
    try:
        out = []
        for seed in seeds:
            out.append(play(env, seed))
            if progress is not None:
                progress(1)
        return out
    finally:
        env.close()


__all__ = ["BACKENDS", "check_backend", "open_pool", "play_each", "run_all"]
