"""``fm9g prepare`` as N deterministic tasks (a Slurm array, Ray, or a loop) whose merge equals one process.

The output directory of a sharded prepare holds, until the merge::

    shards.json               the plan (:mod:`fm9g.core.sharding`): the input (path, size, mtime), the
                              adapter, its options, the split, and each shard's byte range of the input
    shard-00000-of-00004/     items.jsonl (the adapter's result per raw item, an empty line for a dropped
                              one), offsets.npy (its line offsets) and shard.json, the completion record

and after it ``train.jsonl``, ``test.jsonl`` and ``prepare_report.json``, byte for byte those of the
one-process ``fm9g prepare`` of the same input (the report adds a ``sharded`` entry), and the
shard directories are removed.

How the input is cut: a text input (``input_kind`` ``text``) and JSON Lines are cut into byte
ranges of whole lines, so the N tasks share the work. A JSON array or pretty-printed JSON cannot be
cut without parsing it (a value may span lines), so it goes whole to one shard (the others are
empty): convert such a file to JSON Lines once to spread it.

Why the merge equals one process: shard ``k`` stages the raw items of its range in order, so the
shards in order stage exactly the one-process run's items (the adapter sees each item alone). The
split is defined over all raw items, so it is made at the merge: the shards' item counts give ``n``,
:func:`~fm9g.prepare.prepare.split_indices` the same permutation, and each split is written by
reading the staged records in permutation order across the shards.

A shard is built in a hidden temporary directory and renamed into place with its completion record,
so a killed task leaves nothing that reads as complete and its rerun (Ray's retry, Slurm's requeue,
by hand) builds it again; a complete shard is skipped. The merge writes ``test.jsonl``, then
``train.jsonl``, each atomically, and ``prepare_report.json`` last: the report is what says the
prepare is finished (``fm9g index`` refuses a ``train.jsonl`` of a sharded prepare without it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fm9g.core.atomic import PendingDirectory, atomic_file, remove_stale_temps, write_json_atomic
from fm9g.core.errors import Fm9gError
from fm9g.core.executors import check_executor, run_on_ray
from fm9g.core.sharding import (PLAN_FILE, RECORD_FILE, assign_pieces, check_count, claim_directory, input_entries,
                                listed, read_plan, read_record, with_shards)
from fm9g.prepare.prepare import (REPORT_FILE, PrepareResult, TEST_FILE, TRAIN_FILE, check_input, check_kept, describe_item,
                                  make_report, resolve_adapter, stage, write_splits)
from fm9g.prepare.raw_input import detect_layout, iter_json, iter_json_lines, iter_text_lines

PREPARE_FORMAT = "fm9g-sharded-prepare"
PREPARE_VERSION = 1
ITEMS_FILE = "items.jsonl"
OFFSETS_FILE = "offsets.npy"
WHAT = "sharded prepare"


@dataclasses.dataclass
class PrepareJob:
    """What every task of one sharded prepare is given (the same on every node)."""

    input: str
    output: str
    adapter: str
    options: dict[str, Any]
    test_size: float | int | None
    seed: int
    count: int


@dataclasses.dataclass
class ShardOutcome:
    """What one shard task did: ``built`` (now), or found it complete (or the whole prepare merged)."""

    name: str
    built: bool
    items: int
    seconds: float = 0.0
    merge: PrepareResult | None = None
    """The merge's result when this task merged (it completed the last shard)."""


def is_sharded_prepare(directory: Path) -> bool:
    """Whether ``directory`` holds the plan of a sharded prepare (merged or not)."""
    try:
        return json.loads((Path(directory) / PLAN_FILE).read_text(encoding="utf-8")).get("format") == PREPARE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------------- the plan
def claim(job: PrepareJob, *, force: bool = False) -> dict[str, Any]:
    """The plan of the job's output directory, made (and written) by the first task to come."""
    check_count(job.count)
    source = Path(job.input)
    check_input(source)
    output = Path(job.output)
    if output.resolve() in source.resolve().parents:
        raise Fm9gError(f"the input {source} lies inside the output directory", where=str(output),
                        fix="choose an --output directory of its own")
    info, options = resolve_adapter(job.adapter, job.options)
    basis = {
        "format": PREPARE_FORMAT, "format_version": PREPARE_VERSION, "count": job.count,
        "inputs": input_entries([source]),
        "options": {"adapter": info.obj.name, "adapter_options": options, "input_kind": info.obj.input_kind,
                    "test_size": job.test_size, "seed": job.seed},
    }

    def make_plan(basis: dict[str, Any]) -> dict[str, Any]:
        layout = "lines" if info.obj.input_kind == "text" else detect_layout(source)
        whole = () if layout == "lines" else (0,)
        shards = assign_pieces([source], [item["size"] for item in basis["inputs"]], job.count, whole)
        return with_shards({**basis, "input": str(source), "layouts": [layout]}, shards)

    return claim_directory(output, basis, make_plan, force=force, what=WHAT)


def merged_report(directory: Path) -> dict[str, Any] | None:
    """The report of the sharded prepare ``directory`` once merged, else ``None``."""
    if not is_sharded_prepare(directory):
        return None
    plan = read_plan(directory, PREPARE_FORMAT, what=WHAT)
    return json.loads((directory / REPORT_FILE).read_text(encoding="utf-8")) if merged(directory, plan) else None


def merged(directory: Path, plan: dict[str, Any]) -> bool:
    """Whether the merge of ``plan`` is done (its report is there)."""
    try:
        report = json.loads((directory / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and (report.get("sharded") or {}).get("plan_id") == plan["plan_id"]


# ---------------------------------------------------------------------------------------------- shards
def shard_record(directory: Path, plan: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The completion record of shard ``index`` when that shard is complete for ``plan``, else ``None``."""
    folder = directory / plan["shards"][index]["name"]
    record = read_record(folder, plan, index)
    if record is None:
        return None
    try:
        items_size = (folder / ITEMS_FILE).stat().st_size
        offsets_size = (folder / OFFSETS_FILE).stat().st_size
    except OSError:
        return None
    if items_size != record.get("nbytes") or offsets_size != record.get("offsets_nbytes"):
        return None
    return record


def missing_shards(directory: Path, plan: dict[str, Any]) -> list[int]:
    return [index for index in range(plan["count"]) if shard_record(directory, plan, index) is None]


def prepare_shard(job: PrepareJob, index: int, *, finalize: bool = True, progress: bool | None = False) -> ShardOutcome:
    """Shard ``index`` of the job (one task of a Slurm array, of Ray, or of a loop); skipped when complete;
    the task that completes the last shard merges (``finalize``)."""
    started = time.perf_counter()
    if not 0 <= index < job.count:
        raise Fm9gError(f"shard {index} of {job.count} does not exist", where="--shard", fix="0 <= I < N")
    plan = claim(job)
    output = Path(job.output)
    outcome = build_planned(output, plan, index, progress)
    outcome.seconds = time.perf_counter() - started
    if finalize and not merged(output, plan) and not missing_shards(output, plan):
        outcome.merge = finalize_prepare(output)
    return outcome


def build_planned(output: Path, plan: dict[str, Any], index: int, progress: bool | None) -> ShardOutcome:
    spec = plan["shards"][index]
    if merged(output, plan):
        return ShardOutcome(spec["name"], False, 0)
    record = shard_record(output, plan, index)
    if record is not None:
        return ShardOutcome(spec["name"], False, record["items"])
    final = output / spec["name"]
    if final.exists():
        raise Fm9gError("a shard directory exists without a valid completion record (changed by hand?)",
                        where=str(final), fix=f"delete {final} and rerun this task")
    info, options = resolve_adapter(plan["options"]["adapter"], plan["options"]["adapter_options"])
    source = Path(plan["inputs"][0]["path"])
    pending = PendingDirectory(final, replace=False)
    try:
        staged = stage(_raw_items(source, plan, spec), info.obj, options, pending.path / ITEMS_FILE, progress)
        offsets = np.frombuffer(staged.offsets, dtype=np.int64)
        with atomic_file(pending.path / OFFSETS_FILE) as handle:
            np.save(handle, offsets)
        record = {
            "format": PREPARE_FORMAT, "plan_id": plan["plan_id"], "shard": index, "count": plan["count"],
            "pieces": spec["pieces"], "lines": _piece_lines(source, spec["pieces"]),
            "items": staged.items, "records": staged.records, "nbytes": int(offsets[-1]),
            "offsets_nbytes": (pending.path / OFFSETS_FILE).stat().st_size,
            "dropped": dict(sorted(staged.dropped.items())), "first_dropped": staged.first_dropped,
        }
        write_json_atomic(pending.path / RECORD_FILE, record)
        if shard_record(output, plan, index) is not None:  # another run of this task finished first
            pending.discard()
            return ShardOutcome(spec["name"], False, staged.items)
        pending.publish()
    except BaseException:
        pending.discard()
        raise
    return ShardOutcome(spec["name"], True, staged.items)


def _raw_items(source: Path, plan: dict[str, Any], spec: dict[str, Any]) -> Iterator[Any]:
    """The raw items of the shard's pieces of the input, as the one-process prepare reads them."""
    for _, start, end in spec["pieces"]:
        if plan["options"]["input_kind"] == "text":
            yield from iter_text_lines(source, start, end)
        elif plan["layouts"][0] == "lines":
            yield from iter_json_lines(source, start, end)
        else:  # a whole JSON array or concatenated JSON values
            yield from iter_json(source)


# ---------------------------------------------------------------------------------------------- merge
def finalize_prepare(directory: str | os.PathLike[str]) -> PrepareResult:
    """Merge a sharded prepare whose shards are all complete into ``train.jsonl`` / ``test.jsonl`` and
    ``prepare_report.json`` (an error names the missing shards). Two tasks completing the last shards
    at once may both merge: they write the same bytes, and the one that finds the shards gone
    because the other finished first returns the other's report."""
    directory = Path(directory)
    if not is_sharded_prepare(directory):
        raise Fm9gError(f"not a sharded prepare (no prepare plan {PLAN_FILE})", where=str(directory),
                        fix="name the --output of fm9g prepare --shard I/N")
    plan = read_plan(directory, PREPARE_FORMAT, what=WHAT)
    try:
        if not merged(directory, plan):
            return _merge(directory, plan)
    except (OSError, Fm9gError):
        if not merged(directory, plan):
            raise
    return PrepareResult(json.loads((directory / REPORT_FILE).read_text(encoding="utf-8")), {})


def _merge(directory: Path, plan: dict[str, Any]) -> PrepareResult:
    missing = missing_shards(directory, plan)
    if missing:
        raise Fm9gError(f"{len(missing)} of {plan['count']} shards are not complete: {listed(missing)}",
                        where=str(directory),
                        fix=f"run fm9g prepare --shard I/{plan['count']} (same --input and options) for each, "
                            f"then fm9g prepare --finalize {directory}")
    records = [shard_record(directory, plan, index) for index in range(plan["count"])]
    info, options = resolve_adapter(plan["options"]["adapter"], plan["options"]["adapter_options"])
    source, dropped = plan["input"], Counter()
    for record in records:
        dropped.update(record["dropped"])
    item_starts = np.concatenate(([0], np.cumsum([record["items"] for record in records]))).astype(np.int64)
    check_kept(Path(source), info.obj.name, int(item_starts[-1]), sum(record["records"] for record in records), dropped)
    folders = [directory / spec["name"] for spec in plan["shards"]]
    offsets = np.concatenate([np.load(folder / OFFSETS_FILE) for folder in folders]).astype(np.int64)
    test_size, seed = plan["options"]["test_size"], plan["options"]["seed"]
    for name in (TEST_FILE, TRAIN_FILE):
        remove_stale_temps(directory / name)
    staging = PendingDirectory(directory / ".merge", replace=True)
    try:
        kept, outputs = write_splits(staging.path, [folder / ITEMS_FILE for folder in folders], offsets, item_starts,
                                     test_size, seed)
        for name in sorted(outputs, reverse=True):  # test.jsonl before train.jsonl
            os.replace(staging.path / name, directory / name)
    finally:
        staging.discard()
    report = make_report(source, info, options, int(item_starts[-1]), kept, dropped, test_size, seed, outputs)
    report["sharded"] = {"format": PREPARE_FORMAT, "count": plan["count"], "plan_id": plan["plan_id"]}
    first = first_dropped(directory)
    write_json_atomic(directory / REPORT_FILE, report)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return PrepareResult(report, first)


def first_dropped(directory: Path) -> dict[str, str]:
    """The first drop per reason over the shards in order, as the one-process prepare names it
    (``FILE:LINE`` or ``FILE item N``), for the run summary; empty once merged (the shards are gone)."""
    plan = read_plan(directory, PREPARE_FORMAT, what=WHAT)
    found: dict[str, str] = {}
    items_before = lines_before = 0
    for index in range(plan["count"]):
        record = shard_record(directory, plan, index)
        if record is None:
            return found
        for reason, (kind, number) in record["first_dropped"].items():
            base = items_before if kind == "item" else lines_before
            found.setdefault(reason, describe_item(plan["input"], (kind, base + number)))
        items_before += record["items"]
        lines_before += record["lines"]
    return found


def _piece_lines(source: Path, pieces: list[list[int]]) -> int:
    """Lines in the shard's byte ranges of the input (newlines, and an unterminated last line)."""
    lines = 0
    with open(source, "rb") as handle:
        for _, start, end in pieces:
            handle.seek(start)
            remaining, last = end - start, b""
            while remaining > 0:
                block = handle.read(min(remaining, 1 << 20))
                if not block:
                    break
                lines += block.count(b"\n")
                remaining -= len(block)
                last = block
            if last and not last.endswith(b"\n"):
                lines += 1
    return lines


# ---------------------------------------------------------------------------------------------- all shards
def prepare_all(job: PrepareJob, *, executor: str = "local", address: str | None = None, force: bool = False,
                progress: bool | None = None) -> tuple[list[ShardOutcome], PrepareResult]:
    """Every shard of the job, here one after another (``local``) or as Ray tasks (``ray``), then the
    merge (its result second). Complete shards are skipped, so a rerun finishes an interrupted prepare."""
    ray = check_executor(executor)
    plan = claim(job, force=force)
    output = Path(job.output)
    if ray is not None:
        absolute = dataclasses.replace(job, input=str(Path(job.input).resolve()), output=str(output.resolve()))
        results = run_on_ray(ray, shard_task, [(dataclasses.asdict(absolute), index) for index in range(job.count)],
                             num_cpus=1, address=address, desc="prepare (ray)", progress=progress)
        outcomes = [ShardOutcome(**result) for result in results]
    else:
        outcomes = [build_planned(output, plan, index, progress) for index in range(job.count)]
    return outcomes, finalize_prepare(output)


def shard_task(job: dict[str, Any], index: int) -> dict[str, Any]:
    """One shard, in a Ray worker (the merge is left to the driver)."""
    outcome = prepare_shard(PrepareJob(**job), index, finalize=False)
    return {field.name: getattr(outcome, field.name) for field in dataclasses.fields(outcome)}
