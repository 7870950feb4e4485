"""Sharded indexed datasets: N complete indexes of a deterministic split of the inputs, read as one.

A sharded dataset directory holds::

    shards.json               the plan: the inputs (path, size, mtime), the options that change the
                              output, and each shard's newline-aligned byte ranges of the inputs
    shard-00000-of-00004/     a complete index (data.jsonl, index, index.h5, meta.json) plus
                              shard.json, its completion record; the seed's tools read it as it is
    ...
    meta.json                 the aggregate (rows, bytes, tokens, lengths, language, tokenizer
                              fingerprint, every shard's checksum), written only when every shard is

The plan is a pure function of the inputs and N: the concatenated input bytes are cut at ``k/N`` of
their size, each cut moved to the next line start, so shard ``k`` is a run of whole lines and the
shards in order hold exactly the rows of the one-process index of the same inputs. Every task
recomputes the plan and compares it with ``shards.json``, so a task that sees other inputs, another
N or other options fails instead of adding a shard of something else.

A shard is built in a hidden temporary directory and renamed into place with its completion record
inside, so a killed task leaves nothing that reads as complete, and a retry (Ray's, Slurm's requeue,
a rerun by hand) rebuilds it; a shard already complete is skipped. The aggregate ``meta.json`` is
written by whichever task completes the last shard (or ``fm9g index --finalize DIR``); readers
(:mod:`fm9g.index.sharded_reader`) refuse a directory without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fm9g.core.atomic import PendingDirectory, write_json_atomic
from fm9g.core.errors import Fm9gError
from fm9g.core.sharding import (PLAN_FILE, RECORD_FILE, assign_pieces, check_count, digest, input_entries, listed,
                                parse_shard, read_record, shard_name, with_shards)
from fm9g.core.sharding import claim_directory as claim_planned
from fm9g.core.sharding import read_plan as read_planned
from fm9g.index.builder import BuildOptions, Piece, assemble, check_apart, expand_inputs, peek
from fm9g.index.format import DATA_FILE, META_FILE
from fm9g.index.meta import merge_tallies, meta_from_tallies

__all__ = ["PLAN_FILE", "RECORD_FILE", "SHARDED_FORMAT", "parse_shard", "shard_name", "is_sharded", "plan_basis",
           "make_plan", "read_plan", "claim_directory", "build_shard", "build_planned", "shard_record",
           "missing_shards", "finalize_dataset", "first_bad_lines", "ShardOutcome"]

SHARDED_FORMAT = "fm9g-sharded-index"
SHARDED_VERSION = 1
PATH_TOKENIZERS = ("hf", "sp", "sentencepiece")
WHAT = "sharded index"


def is_sharded(directory: Path) -> bool:
    return (Path(directory) / PLAN_FILE).is_file()


def absolute_tokenizer(spec: str | None) -> str | None:
    """``hf:./tok`` names ./tok of the current directory; tasks on other nodes or in Ray workers run
    elsewhere, so the plan keeps the absolute path."""
    if spec is None:
        return None
    name, sep, argument = spec.partition(":")
    if sep and name in PATH_TOKENIZERS and argument and Path(argument).exists():
        return f"{name}:{Path(argument).resolve()}"
    return spec


# ---------------------------------------------------------------------------------------------- the plan
def plan_basis(files: Sequence[Path], count: int, options: BuildOptions) -> dict[str, Any]:
    """What a plan is a function of: the inputs (path, size, mtime), N and the options that change the output."""
    check_count(count)
    return {
        "format": SHARDED_FORMAT, "format_version": SHARDED_VERSION, "count": count,
        "inputs": input_entries(files),
        "options": {"tokenizer": absolute_tokenizer(options.tokenizer), "language": options.language,
                    "max_line_bytes": options.max_line_bytes},
    }


def make_plan(files: Sequence[Path], basis: dict[str, Any]) -> dict[str, Any]:
    """The deterministic assignment of the inputs' bytes to the basis's N shards (:mod:`fm9g.core.sharding`)."""
    return with_shards(basis, assign_pieces(files, [item["size"] for item in basis["inputs"]], basis["count"]))


def read_plan(directory: Path) -> dict[str, Any]:
    return read_planned(directory, SHARDED_FORMAT, what=WHAT)


def claim_directory(output: Path, files: list[Path], count: int, options: BuildOptions, *, force: bool) -> dict[str, Any]:
    """The plan of ``output`` (:func:`fm9g.core.sharding.claim_directory`): the one in its ``shards.json``
    when it was made from the same basis (only ``stat`` calls), else a new one written there."""
    return claim_planned(output, plan_basis(files, count, options), lambda basis: make_plan(files, basis),
                         force=force, what=WHAT)


# ---------------------------------------------------------------------------------------------- shards
@dataclass
class ShardOutcome:
    """What one shard task did: ``built`` (now), or found it already complete."""

    name: str
    built: bool
    record: dict[str, Any]
    seconds: float = 0.0


def shard_record(directory: Path, plan: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The completion record of shard ``index`` when that shard is complete for ``plan``, else ``None``."""
    folder = directory / plan["shards"][index]["name"]
    record = read_record(folder, plan, index)
    if record is None:
        return None
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        size = (folder / DATA_FILE).stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("data_checksum") != record.get("data_checksum") or size != record.get("nbytes"):
        return None
    return record


def build_shard(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], index: int, count: int,
                options: BuildOptions, *, finalize: bool = True) -> ShardOutcome:
    """Build shard ``index`` of ``count`` of the inputs into ``output`` (a task of a Slurm array, of Ray,
    or of a loop); skip it when already complete; write the aggregate when it completes the dataset."""
    import time

    started = time.perf_counter()
    output = Path(output)
    files = expand_inputs(inputs)
    check_apart(files, output)
    plan = claim_directory(output, files, count, options, force=False)
    outcome = build_planned(output, plan, index, options)
    outcome.seconds = time.perf_counter() - started
    if finalize and missing_shards(output, plan) == []:
        finalize_dataset(output)
    return outcome


def build_planned(output: Path, plan: dict[str, Any], index: int,
                   options: BuildOptions) -> ShardOutcome:
    spec = plan["shards"][index]
    final = output / spec["name"]
    record = shard_record(output, plan, index)
    if record is not None:
        return ShardOutcome(spec["name"], False, record)
    if final.exists():
        raise Fm9gError("a shard directory exists without a valid completion record (changed by hand?)",
                        where=str(final), fix=f"delete {final} and rerun this task")
    inputs = [Path(item["path"]) for item in plan["inputs"]]  # absolute: the same bytes whoever builds it
    pieces: list[Piece] = [(inputs[number], start, end) for number, start, end in spec["pieces"]]
    used = list(dict.fromkeys(path for path, _, _ in pieces))
    for path in used:
        peek(path)
    shard_options = BuildOptions(**{**options.__dict__, "tokenizer": plan["options"]["tokenizer"]})
    pending = PendingDirectory(final, replace=False)
    try:
        summary, assembler = assemble(pieces, pending.path, used, shard_options)
        record = {
            "format": SHARDED_FORMAT, "plan_id": plan["plan_id"], "shard": index, "count": plan["count"],
            "pieces": spec["pieces"], "nlines": assembler.nlines, "nbytes": assembler.nbytes,
            "data_checksum": summary.meta["data_checksum"], "tokenizer_fingerprint": summary.meta["tokenizer_fingerprint"],
            "tallies": assembler.tallies(), "data_sample": assembler.sample, "first_bad": summary.first_bad,
        }
        write_json_atomic(pending.path / RECORD_FILE, record)
        if shard_record(output, plan, index) is not None:  # another run of this task finished first
            pending.discard()
            return ShardOutcome(spec["name"], False, shard_record(output, plan, index))
        pending.publish()
    except BaseException:
        pending.discard()
        raise
    return ShardOutcome(spec["name"], True, record)


def missing_shards(output: Path, plan: dict[str, Any]) -> list[int]:
    return [index for index in range(plan["count"]) if shard_record(output, plan, index) is None]


# ---------------------------------------------------------------------------------------------- aggregate
def finalize_dataset(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the aggregate ``meta.json`` of a sharded dataset whose shards are all complete; an error
    names the missing ones. Deterministic: tasks finishing at once write the same bytes."""
    directory = Path(directory)
    if not is_sharded(directory):
        raise Fm9gError(f"not a sharded index (no {PLAN_FILE})", where=str(directory),
                        fix="name the --output of fm9g index --shard I/N")
    plan = read_plan(directory)
    missing = missing_shards(directory, plan)
    if missing:
        raise Fm9gError(f"{len(missing)} of {plan['count']} shards are not complete: {listed(missing)}", where=str(directory),
                        fix=f"run fm9g index --shard I/{plan['count']} (same --input and options) for each, then --finalize")
    records = [shard_record(directory, plan, index) for index in range(plan["count"])]
    fingerprints = {record["tokenizer_fingerprint"] for record in records}
    if len(fingerprints) > 1:
        raise Fm9gError(f"the shards were tokenized with different tokenizers ({', '.join(map(str, sorted(fingerprints, key=str)))})",
                        where=str(directory), fix="install the same tokenizer files on every node and rebuild the odd shards")
    tallies = merge_tallies([record["tallies"] for record in records])
    if tallies["nlines"] == 0:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(tallies["skipped"].items())) or "the input is empty"
        raise Fm9gError(f"no valid records in any shard ({reasons})", where=str(directory),
                        fix='each line must be a JSON object with string "input" and "output"')
    shards = [{"name": spec["name"], "nlines": record["nlines"], "nbytes": record["nbytes"],
               "data_checksum": record["data_checksum"]} for spec, record in zip(plan["shards"], records)]
    meta = meta_from_tallies(
        tallies, language=plan["options"]["language"], tokenizer=plan["options"]["tokenizer"],
        tokenizer_fingerprint=fingerprints.pop(), data_checksum="",
        data_sample=next((record["data_sample"] for record in records if record["data_sample"] is not None), None),
        sources=[item["path"] for item in plan["inputs"]])
    del meta["data_checksum"]  # there is no single data.jsonl; each shard's checksum is listed instead
    meta.update({"sharded": {"format": SHARDED_FORMAT, "format_version": SHARDED_VERSION, "count": plan["count"],
                             "plan_id": plan["plan_id"], "shards_checksum": digest([s["data_checksum"] for s in shards])},
                 "shards": shards})
    write_json_atomic(directory / META_FILE, meta)
    return meta


def first_bad_lines(directory: Path) -> dict[str, str]:
    """The first bad line per skip reason over the shards in order (for the run summary)."""
    plan = read_plan(directory)
    found: dict[str, str] = {}
    for index in range(plan["count"]):
        record = shard_record(directory, plan, index) or {}
        for reason, where in (record.get("first_bad") or {}).items():
            found.setdefault(reason, where)
    return found
