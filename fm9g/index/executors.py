"""Where the shard tasks of ``fm9g index --shards N`` run: one after another here, or as Ray tasks.

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

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fm9g.core.errors import Fm9gError
from fm9g.index.builder import BuildOptions, check_apart, expand_inputs
from fm9g.index.shards import ShardOutcome, build_planned, build_shard, claim_directory, finalize_dataset

EXECUTORS = ("local", "ray")
MAX_RETRIES = 3
"""Attempts after the first when a task's worker dies (Ray's default for tasks, stated here)."""


def build_all(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], count: int,
              options: BuildOptions, *, executor: str = "local", address: str | None = None) -> list[ShardOutcome]:
    """Every shard of ``count``, here one after another (``local``) or as Ray tasks (``ray``), then the
    aggregate. Shards already complete are skipped, so a rerun finishes an interrupted build."""
    if executor not in EXECUTORS:
        raise Fm9gError(f"unknown executor '{executor}'", where="--executor", fix=f"use one of {', '.join(EXECUTORS)}")
    ray = import_ray() if executor == "ray" else None  # before any work: a missing extra is the first thing said
    output = Path(output)
    files = expand_inputs(inputs)
    check_apart(files, output)
    plan = claim_directory(output, files, count, options, force=options.force)
    if ray is not None:
        outcomes = _run_on_ray(ray, [str(path.resolve()) for path in files], output.resolve(), count, options, address)
    else:
        outcomes = [build_planned(output, plan, index, options) for index in range(count)]
    finalize_dataset(output)
    return outcomes


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise Fm9gError("--executor ray needs Ray, which is not installed", where="--executor ray",
                        fix="pip install 'fm9g[ray]' (on every node of the cluster), or leave out --executor") from None
    return ray


def shard_task(inputs: list[str], output: str, index: int, count: int, options: dict[str, Any]) -> dict[str, Any]:
    """One shard, in a Ray worker (the aggregate is left to the driver)."""
    outcome = build_shard(inputs, output, index, count, BuildOptions(**options), finalize=False)
    return dataclasses.asdict(outcome)


def _run_on_ray(ray: Any, inputs: list[str], output: Path, count: int, options: BuildOptions,
                address: str | None) -> list[ShardOutcome]:
    """Run every shard as a Ray task on the cluster at ``address`` (``auto``: the running one; ``None``:
    ``$RAY_ADDRESS``, else a local cluster started for this run) and wait for all of them."""
    from tqdm import tqdm

    workers = max(1, options.workers or 1)
    task_options = {**dataclasses.asdict(options), "workers": workers, "progress": False, "force": False}
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(shard_task).options(num_cpus=workers, max_retries=MAX_RETRIES, retry_exceptions=False)
        pending = [remote.remote(inputs, str(output), index, count, task_options) for index in range(count)]
        order = {ref: index for index, ref in enumerate(pending)}
        results: list[dict[str, Any] | None] = [None] * count
        with tqdm(total=count, unit="shard", desc="index (ray)", disable=None if options.progress is None
                  else not options.progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[order[ref]] = _result(ray, ref)
                    bar.update(1)
    finally:
        if connected_here:
            ray.shutdown()
    return [ShardOutcome(**result) for result in results if result is not None]


def _result(ray: Any, ref: Any) -> dict[str, Any]:
    """A task's result; its Fm9gError (bad input, another plan) as itself rather than Ray's wrapper."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        raise (cause if isinstance(cause, Fm9gError) else error) from None
