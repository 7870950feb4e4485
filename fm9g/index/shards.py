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

import bisect
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fm9g.core.atomic import OUTPUT_MARKER, TMP_MARK, PendingDirectory, check_replaceable, write_json_atomic
from fm9g.core.errors import Fm9gError
from fm9g.index.builder import (BuildOptions, Piece, assemble, check_apart, expand_inputs, line_end_after, peek)
from fm9g.index.format import DATA_FILE, META_FILE
from fm9g.index.meta import merge_tallies, meta_from_tallies

PLAN_FILE = "shards.json"
RECORD_FILE = "shard.json"
SHARDED_FORMAT = "fm9g-sharded-index"
SHARDED_VERSION = 1
PATH_TOKENIZERS = ("hf", "sp", "sentencepiece")


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (I counted from 0, as ``$SLURM_ARRAY_TASK_ID`` of ``--array=0-(N-1)``) → ``(I, N)``."""
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise Fm9gError(f"--shard takes I/N with 0 <= I < N, got '{text}'", where="--shard",
                        fix="e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with #SBATCH --array=0-(N-1)")
    return int(index), int(count)


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
    if count < 1:
        raise Fm9gError(f"the number of shards must be at least 1, got {count}", where="--shards")
    return {
        "format": SHARDED_FORMAT, "format_version": SHARDED_VERSION, "count": count,
        "inputs": [{"path": str(path.resolve()), "size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
                   for path in files],
        "options": {"tokenizer": absolute_tokenizer(options.tokenizer), "language": options.language,
                    "max_line_bytes": options.max_line_bytes},
    }


def make_plan(files: Sequence[Path], basis: dict[str, Any]) -> dict[str, Any]:
    """The deterministic assignment of the inputs' bytes to the basis's N shards (see the module docstring)."""
    count = basis["count"]
    sizes = [item["size"] for item in basis["inputs"]]
    starts = [sum(sizes[:number]) for number in range(len(sizes) + 1)]
    total = starts[-1]
    cuts = [0]
    for k in range(1, count):
        target = max(k * total // count, cuts[-1])
        number = min(bisect.bisect_right(starts, target) - 1, len(files) - 1)
        with open(files[number], "rb") as handle:
            local = line_end_after(handle, target - starts[number], sizes[number])
        cuts.append(max(cuts[-1], starts[number] + local))
    cuts.append(total)
    shards = []
    for k in range(count):
        pieces = [[number, max(cuts[k], starts[number]) - starts[number], min(cuts[k + 1], starts[number + 1]) - starts[number]]
                  for number in range(len(files)) if max(cuts[k], starts[number]) < min(cuts[k + 1], starts[number + 1])]
        shards.append({"name": shard_name(k, count), "pieces": pieces, "bytes": cuts[k + 1] - cuts[k]})
    plan = {**basis, "shards": shards}
    plan["plan_id"] = _digest(plan)
    return plan


def _digest(document: Any) -> str:
    return "blake2b:" + hashlib.blake2b(json.dumps(document, sort_keys=True).encode(), digest_size=16).hexdigest()


def _plan_difference(existing: dict[str, Any], plan: dict[str, Any]) -> str | None:
    """What differs between a directory's plan and this task's, in words."""
    if existing.get("count") != plan["count"]:
        return f"it was planned for {existing.get('count')} shards and this task asks for {plan['count']}"
    before = {item["path"]: item for item in existing.get("inputs", [])}
    now = {item["path"]: item for item in plan["inputs"]}
    for path in sorted(before.keys() | now.keys()):
        if path not in now:
            return f"its inputs include {path}, which this task does not name"
        if path not in before:
            return f"this task names an input it was not planned with: {path}"
        if before[path] != now[path]:
            return (f"the input {path} changed since it was planned (size {before[path]['size']} → {now[path]['size']}, "
                    "or modified)")
    for key, value in plan["options"].items():
        if existing.get("options", {}).get(key) != value:
            return f"it was planned with {key}={existing.get('options', {}).get(key)!r}, this task has {value!r}"
    if existing.get("format_version") != plan["format_version"]:
        return f"it was planned by another version of fm9g (sharded format {existing.get('format_version')})"
    return None


def read_plan(directory: Path) -> dict[str, Any]:
    path = Path(directory) / PLAN_FILE
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise Fm9gError(f"unreadable shard plan ({error})", where=str(path),
                        fix="delete the directory and build the sharded index again") from None
    if not isinstance(plan, dict) or plan.get("format") != SHARDED_FORMAT or not isinstance(plan.get("shards"), list):
        raise Fm9gError("not a sharded index plan", where=str(path), fix="delete the directory and build it again")
    return plan


def claim_directory(output: Path, files: list[Path], count: int, options: BuildOptions, *, force: bool) -> dict[str, Any]:
    """The plan of ``output``: the one in its ``shards.json`` when it was made from the same basis (only
    ``stat`` calls), else a new one written there (``output`` is created). ``force`` replaces a directory
    fm9g wrote that holds another plan; without it another plan is an error saying what differs."""
    basis = plan_basis(files, count, options)
    if output.exists():
        if not output.is_dir():
            raise Fm9gError("output exists and is not a directory", where=str(output), fix="choose another --output")
        if is_sharded(output):
            existing = read_plan(output)
            difference = _plan_difference(existing, basis)
            if difference is None:
                return existing
            if not force:
                raise Fm9gError(f"this sharded index holds another plan: {difference}",
                                where=str(output), fix="rerun with the same inputs, --shards and options, or choose "
                                "a new --output (or pass --force to a whole-dataset build to start over)")
        elif not _being_claimed(output) and not force:
            raise Fm9gError("output exists and is not a sharded index", where=str(output),
                            fix="choose another --output (or --force to replace an index fm9g wrote)")
        if not _being_claimed(output):
            check_replaceable(output)
            shutil.rmtree(output)
    plan = make_plan(files, basis)
    output.mkdir(parents=True, exist_ok=True)
    marker = output / OUTPUT_MARKER
    if not marker.exists():
        marker.write_text("written by fm9g; --force may replace this directory\n", encoding="utf-8")
    write_json_atomic(output / PLAN_FILE, plan)  # tasks starting at once write the same bytes
    return plan


def _being_claimed(output: Path) -> bool:
    """Whether ``output`` is empty but for the marker and plan temps of tasks claiming it right now."""
    return all(entry.name == OUTPUT_MARKER or entry.name.startswith(f".{PLAN_FILE}{TMP_MARK}")
               for entry in output.iterdir())


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
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        size = (folder / DATA_FILE).stat().st_size
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("plan_id") != plan["plan_id"] or record.get("shard") != index
            or not isinstance(meta, dict) or meta.get("data_checksum") != record.get("data_checksum")
            or size != record.get("nbytes")):
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
        listed = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise Fm9gError(f"{len(missing)} of {plan['count']} shards are not complete: {listed}", where=str(directory),
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
                             "plan_id": plan["plan_id"], "shards_checksum": _digest([s["data_checksum"] for s in shards])},
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
