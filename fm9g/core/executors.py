"""Where the shard tasks of ``fm9g prepare --shards N`` and ``fm9g index --shards N`` run: one after
another here, or as Ray tasks.

With ``--executor ray`` each shard is one Ray task. Ray schedules the tasks over its nodes and
runs one again when the worker process or node running it dies (``max_retries``); a task raising
an error is not retried (the error would repeat), its message is shown instead. Retries are safe
because a shard task is idempotent: it builds in a hidden temporary directory, publishes by one
rename with its completion record inside, and skips a shard that is already complete, so neither a
killed attempt nor a second one leaves a partial or a duplicate shard. Every node must see the
inputs and the output directory at the same paths (a shared file system) and have fm9g installed.
Ray is an optional dependency: ``pip install 'fm9g[ray]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fm9g.core.errors import Fm9gError

EXECUTORS = ("local", "ray")
MAX_RETRIES = 3
"""Attempts after the first when a task's worker dies (Ray's default for tasks, stated here)."""


def check_executor(executor: str) -> Any:
    """Ray's module for ``ray`` (imported before any work, so a missing extra is the first thing said),
    ``None`` for ``local``."""
    if executor not in EXECUTORS:
        raise Fm9gError(f"unknown executor '{executor}'", where="--executor", fix=f"use one of {', '.join(EXECUTORS)}")
    return import_ray() if executor == "ray" else None


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise Fm9gError("--executor ray needs Ray, which is not installed", where="--executor ray",
                        fix="pip install 'fm9g[ray]' (on every node of the cluster), or leave out --executor") from None
    return ray


def run_on_ray(ray: Any, task: Callable[..., Any], arguments: Sequence[tuple], *, num_cpus: int,
               address: str | None, desc: str, progress: bool | None) -> list[Any]:
    """``task(*args)`` for every ``args`` of ``arguments`` as Ray tasks on the cluster at ``address``
    (``auto``: the running one; ``None``: ``$RAY_ADDRESS``, else a local cluster started for this run);
    their results in the order of ``arguments``. ``task`` must be a module-level function (Ray ships it
    by reference) and its arguments and result plain data."""
    from tqdm import tqdm

    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(task).options(num_cpus=num_cpus, max_retries=MAX_RETRIES, retry_exceptions=False)
        pending = [remote.remote(*args) for args in arguments]
        order = {ref: index for index, ref in enumerate(pending)}
        results: list[Any] = [None] * len(pending)
        with tqdm(total=len(pending), unit="shard", desc=desc, disable=None if progress is None else not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[order[ref]] = _result(ray, ref)
                    bar.update(1)
    finally:
        if connected_here:
            ray.shutdown()
    return results


def _result(ray: Any, ref: Any) -> Any:
    """A task's result; its Fm9gError (bad input, another plan) as itself rather than Ray's wrapper."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        raise (cause if isinstance(cause, Fm9gError) else error) from None
