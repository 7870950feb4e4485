"""The shard plan shared by ``fm9g prepare`` and ``fm9g index``: a deterministic assignment of the
inputs' bytes to N tasks, written once as ``shards.json`` and checked by every task.

The plan is a pure function of its *basis* (the inputs' paths, sizes and mtimes, N and the options
that change the output): the concatenated input bytes are cut at ``k/N`` of their size and each cut
is moved to the next line start, so shard ``k`` is a run of whole lines and the shards in order hold
exactly the bytes of the inputs in order. An input that cannot be cut inside (a JSON array: a value
may span many lines) keeps every cut that would fall inside it at its end, so it goes whole to one
shard. Every task recomputes the basis (``stat`` calls only) and compares it with the directory's
``shards.json``, so a task that sees other inputs, another N or other options fails, naming the
difference, instead of adding a shard of something else.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import shutil
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from fm9g.core.atomic import OUTPUT_MARKER, TMP_MARK, check_replaceable, write_json_atomic
from fm9g.core.errors import Fm9gError

PLAN_FILE = "shards.json"
RECORD_FILE = "shard.json"
"""A shard's completion record, inside the shard directory (published with it by one rename)."""


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (I counted from 0, as ``$SLURM_ARRAY_TASK_ID`` of ``--array=0-(N-1)``) → ``(I, N)``."""
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise Fm9gError(f"--shard takes I/N with 0 <= I < N, got '{text}'", where="--shard",
                        fix="e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with #SBATCH --array=0-(N-1)")
    return int(index), int(count)


def line_end_after(handle: Any, position: int, end: int) -> int:
    """The offset just after the first newline at or after ``position - 1`` (``end`` when there is none
    before it): a cut there never splits a line, and a cut at a line start stays where it is."""
    if position <= 0:
        return 0
    handle.seek(position - 1)
    while handle.tell() < end:
        block = handle.read(1 << 16)
        if not block:
            break
        newline = block.find(b"\n")
        if newline >= 0:
            return min(end, handle.tell() - len(block) + newline + 1)
    return end


def digest(document: Any) -> str:
    """A short stable hash of a JSON document (the plan's id)."""
    return "blake2b:" + hashlib.blake2b(json.dumps(document, sort_keys=True).encode(), digest_size=16).hexdigest()


def input_entries(files: Sequence[Path]) -> list[dict[str, Any]]:
    """The inputs as a basis names them: absolute path (tasks run elsewhere), size and mtime."""
    entries = []
    for path in files:
        info = path.stat()
        entries.append({"path": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns})
    return entries


def check_count(count: int) -> None:
    if count < 1:
        raise Fm9gError(f"the number of shards must be at least 1, got {count}", where="--shards")


def assign_pieces(files: Sequence[Path], sizes: Sequence[int], count: int,
                  whole: Collection[int] = ()) -> list[dict[str, Any]]:
    """Each shard's ``pieces`` (``[file number, start, end]``, newline-aligned) and ``bytes``; the files
    numbered in ``whole`` are never cut inside (see the module docstring)."""
    starts = [sum(sizes[:number]) for number in range(len(sizes) + 1)]
    total = starts[-1]
    cuts = [0]
    for k in range(1, count):
        target = max(k * total // count, cuts[-1])
        number = min(bisect.bisect_right(starts, target) - 1, len(files) - 1)
        if number in whole:
            local = sizes[number] if target > starts[number] else 0
        else:
            with open(files[number], "rb") as handle:
                local = line_end_after(handle, target - starts[number], sizes[number])
        cuts.append(max(cuts[-1], starts[number] + local))
    cuts.append(total)
    shards = []
    for k in range(count):
        pieces = [[number, max(cuts[k], starts[number]) - starts[number], min(cuts[k + 1], starts[number + 1]) - starts[number]]
                  for number in range(len(files)) if max(cuts[k], starts[number]) < min(cuts[k + 1], starts[number + 1])]
        shards.append({"name": shard_name(k, count), "pieces": pieces, "bytes": cuts[k + 1] - cuts[k]})
    return shards


def with_shards(basis: dict[str, Any], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan: the basis, the shards and the plan's id (a digest of both)."""
    plan = {**basis, "shards": shards}
    plan["plan_id"] = digest(plan)
    return plan


def plan_difference(existing: dict[str, Any], basis: dict[str, Any]) -> str | None:
    """What differs between a directory's plan and this task's basis, in words (``None``: the same)."""
    if existing.get("count") != basis["count"]:
        return f"it was planned for {existing.get('count')} shards and this task asks for {basis['count']}"
    before = {item["path"]: item for item in existing.get("inputs", [])}
    now = {item["path"]: item for item in basis["inputs"]}
    for path in sorted(before.keys() | now.keys()):
        if path not in now:
            return f"its inputs include {path}, which this task does not name"
        if path not in before:
            return f"this task names an input it was not planned with: {path}"
        if before[path] != now[path]:
            return (f"the input {path} changed since it was planned (size {before[path]['size']} → {now[path]['size']}, "
                    "or modified)")
    for key, value in basis["options"].items():
        if existing.get("options", {}).get(key) != value:
            return f"it was planned with {key}={existing.get('options', {}).get(key)!r}, this task has {value!r}"
    if existing.get("format_version") != basis["format_version"]:
        return f"it was planned by another version of fm9g (sharded format {existing.get('format_version')})"
    return None


def read_plan(directory: Path, plan_format: str, *, what: str) -> dict[str, Any]:
    """The ``shards.json`` of ``directory``, which must be a plan of ``plan_format``."""
    path = Path(directory) / PLAN_FILE
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise Fm9gError(f"unreadable shard plan ({error})", where=str(path),
                        fix=f"delete the directory and build the {what} again") from None
    if not isinstance(plan, dict) or plan.get("format") != plan_format or not isinstance(plan.get("shards"), list):
        raise Fm9gError(f"not a {what} plan", where=str(path), fix=f"delete the directory and build the {what} again")
    return plan


def claim_directory(output: Path, basis: dict[str, Any], make_plan: Callable[[dict[str, Any]], dict[str, Any]], *,
                    force: bool, what: str) -> dict[str, Any]:
    """The plan of ``output``: the one in its ``shards.json`` when it was made from ``basis``, else a new
    one (``make_plan(basis)``, ending in :func:`with_shards`) written there (``output`` is created). ``force`` replaces a directory fm9g
    wrote that holds another plan; without it another plan is an error saying what differs."""
    if output.exists():
        if not output.is_dir():
            raise Fm9gError("output exists and is not a directory", where=str(output), fix="choose another --output")
        if (output / PLAN_FILE).is_file():
            existing = read_plan(output, basis["format"], what=what)
            difference = plan_difference(existing, basis)
            if difference is None:
                return existing
            if not force:
                raise Fm9gError(f"this {what} holds another plan: {difference}",
                                where=str(output), fix="rerun with the same inputs, --shards and options, or choose "
                                "a new --output (or pass --force to a whole-dataset build to start over)")
        elif not _being_claimed(output) and not force:
            raise Fm9gError(f"output exists and is not a {what}", where=str(output),
                            fix="choose another --output (or --force to replace a directory fm9g wrote)")
        if not _being_claimed(output):
            check_replaceable(output)
            shutil.rmtree(output)
    plan = make_plan(basis)
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


def read_record(folder: Path, plan: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The completion record in ``folder`` when it belongs to shard ``index`` of ``plan``, else ``None``
    (missing, unreadable, or of another plan)."""
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("plan_id") != plan["plan_id"] or record.get("shard") != index:
        return None
    return record


def listed(indices: Sequence[int], limit: int = 20) -> str:
    """``0, 3, 7 ...``: shard numbers for a message."""
    return ", ".join(map(str, indices[:limit])) + (" ..." if len(indices) > limit else "")
