"""Where the shard tasks of ``fm9g index --shards N`` run: one after another here, or as Ray tasks
(:mod:`fm9g.core.executors` says how Ray retries them and why a retry is safe)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fm9g.core.executors import check_executor, run_on_ray
from fm9g.index.builder import BuildOptions, check_apart, expand_inputs
from fm9g.index.shards import ShardOutcome, build_planned, build_shard, claim_directory, finalize_dataset


def build_all(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], count: int,
              options: BuildOptions, *, executor: str = "local", address: str | None = None) -> list[ShardOutcome]:
    """Every shard of ``count``, here one after another (``local``) or as Ray tasks (``ray``), then the
    aggregate. Shards already complete are skipped, so a rerun finishes an interrupted build."""
    ray = check_executor(executor)
    output = Path(output)
    files = expand_inputs(inputs)
    check_apart(files, output)
    plan = claim_directory(output, files, count, options, force=options.force)
    if ray is not None:
        workers = max(1, options.workers or 1)
        task_options = {**dataclasses.asdict(options), "workers": workers, "progress": False, "force": False}
        absolute = [str(path.resolve()) for path in files]
        results = run_on_ray(ray, shard_task, [(absolute, str(output.resolve()), index, count, task_options)
                                               for index in range(count)],
                             num_cpus=workers, address=address, desc="index (ray)", progress=options.progress)
        outcomes = [ShardOutcome(**result) for result in results]
    else:
        outcomes = [build_planned(output, plan, index, options) for index in range(count)]
    finalize_dataset(output)
    return outcomes


def shard_task(inputs: list[str], output: str, index: int, count: int, options: dict[str, Any]) -> dict[str, Any]:
    """One shard, in a Ray worker (the aggregate is left to the driver)."""
    outcome = build_shard(inputs, output, index, count, BuildOptions(**options), finalize=False)
    return dataclasses.asdict(outcome)
