"""``fm9g index``: build a seed-compatible indexed dataset directory from JSONL records, whole or as
N shards (``--shard I/N`` for one task of a Slurm array, ``--shards N`` for all of them here or on Ray)."""

from __future__ import annotations

import argparse
import sys

NAME = "index"
HELP = "index JSONL records into a seed-compatible dataset directory (data.jsonl, index, index.h5, meta.json)"
ORDER = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", nargs="+", metavar="FILE_OR_GLOB",
                        help="JSONL file(s) of records with string 'input' and 'output'; globs allowed (required)")
    parser.add_argument("--output", "-o", metavar="DIR",
                        help="directory to create (not the input's directory; required)")
    parser.add_argument("--tokenizer", metavar="SPEC",
                        help="count input/output tokens per line with this tokenizer (byte, hf:PATH, sp:PATH.model); "
                             "without it token statistics use the seed's estimate")
    parser.add_argument("--language", choices=["zh", "en"],
                        help="dataset language for meta.json (default: detected from the records)")
    parser.add_argument("--workers", type=int, metavar="N", help="worker processes (default: all usable cores)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--max-line-mb", type=float, default=64.0, metavar="MB",
                        help="skip (and count) lines longer than this many MiB (default 64)")
    parser.add_argument("--chunk-mb", type=float, metavar="MB", help="bytes per worker task (default: automatic)")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    sharding = parser.add_argument_group("sharded indexes (one dataset of N shards, built by N tasks)")
    sharding.add_argument("--shard", metavar="I/N",
                          help="build only shard I (0 <= I < N) of N: one task of a job array, e.g. "
                               "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; the task completing the "
                               "last shard writes the aggregate meta.json")
    sharding.add_argument("--shards", type=int, metavar="N", help="build all N shards, then the aggregate")
    sharding.add_argument("--executor", choices=["local", "ray"], default="local",
                          help="where --shards runs its tasks: one after another here (local), or as Ray tasks "
                               "(ray; needs pip install 'fm9g[ray]' and a file system every node sees)")
    sharding.add_argument("--address", metavar="ADDR",
                          help="the Ray cluster for --executor ray (auto: the running one; default: $RAY_ADDRESS, "
                               "else a local cluster for this run)")
    sharding.add_argument("--finalize", metavar="DIR",
                          help="write the aggregate meta.json of the sharded index DIR once all its shards are "
                               "complete (else say which are missing)")


def run(args: argparse.Namespace) -> int:
    from fm9g.core.errors import Fm9gError
    from fm9g.index.builder import BuildOptions, build_index

    if args.workers is not None and args.workers < 1:
        raise Fm9gError("--workers must be at least 1", where="--workers")
    options = BuildOptions(
        tokenizer=args.tokenizer,
        language=args.language,
        workers=args.workers,
        strict=args.strict,
        force=args.force,
        chunk_bytes=int(args.chunk_mb * (1 << 20)) if args.chunk_mb else None,
        max_line_bytes=int(args.max_line_mb * (1 << 20)),
        progress=False if args.no_progress else None,
    )
    if args.finalize:
        return _finalize(args.finalize, options)
    for flag, value in (("--input", args.input), ("--output", args.output)):
        if not value:
            raise Fm9gError(f"{flag} is required", where=flag, fix="fm9g index --input FILE --output DIR")
    if args.shard or args.shards or args.executor != "local":
        return _run_sharded(args, options)
    held_out = _prepared_test_split(args.input)
    summary = build_index(args.input, args.output, options)
    _report(summary)
    if held_out is not None:
        from pathlib import Path

        from fm9g.mixer.held_out import HELD_OUT_DIR

        print(f"held-out split: {held_out} beside the input (fm9g prepare --split); indexing it too")
        _report(build_index([held_out], Path(args.output) / HELD_OUT_DIR, options))
    return 0


def _prepared_test_split(inputs: list[str]):
    """The ``test.jsonl`` that ``fm9g prepare --split`` wrote beside the one ``train.jsonl`` indexed, if any:
    ``fm9g train`` evaluates each task on the indexed test split inside its training index. A
    ``train.jsonl`` of a sharded prepare whose merge has not written its report yet is refused."""
    from pathlib import Path

    from fm9g.core.errors import Fm9gError
    from fm9g.prepare.shards import is_sharded_prepare, merged_report

    if len(inputs) != 1 or Path(inputs[0]).name != "train.jsonl":
        return None
    prepared = Path(inputs[0]).parent
    if is_sharded_prepare(prepared) and merged_report(prepared) is None:
        raise Fm9gError("this train.jsonl belongs to a sharded fm9g prepare that has not finished merging",
                        where=str(prepared), fix=f"finish it first: fm9g prepare --finalize {prepared}")
    candidate = Path(inputs[0]).with_name("test.jsonl")
    return candidate if candidate.is_file() and candidate.with_name("prepare_report.json").is_file() else None


def _index_test_split(inputs: list[str], output, options) -> None:
    """Index the prepared test split (if any) as a plain index at ``<output>/test`` of a complete sharded
    index, where ``fm9g train`` finds held-out data; skipped when already there (a rerun, or another
    task completing a shard at the same moment)."""
    from pathlib import Path

    from fm9g.core.errors import Fm9gError
    from fm9g.index.builder import build_index
    from fm9g.index.reader import IndexedDataset
    from fm9g.mixer.held_out import HELD_OUT_DIR

    held_out = _prepared_test_split(inputs)
    target = Path(output) / HELD_OUT_DIR
    if held_out is None or not (Path(output) / "meta.json").is_file():
        return
    if (target / "meta.json").is_file():
        print(f"held-out split: {target} already indexed")
        return
    print(f"held-out split: {held_out} beside the input (fm9g prepare --split); indexing it into {target}")
    test_options = type(options)(**{**options.__dict__, "force": False})
    try:
        _report(build_index([held_out], target, test_options))
    except Fm9gError:
        if not (target / "meta.json").is_file():  # not another task's finished build of it
            raise
        IndexedDataset(target)


def _report(summary) -> None:
    meta = summary.meta
    print(f"indexed {meta['nlines']:,} lines ({meta['nbytes'] / 1e6:,.1f} MB) into {summary.output} "
          f"in {summary.seconds:.1f} s ({summary.megabytes_per_second:,.1f} MB/s, {summary.workers} workers)")
    _statistics(meta, summary.first_bad)


def _statistics(meta: dict, first_bad: dict[str, str]) -> None:
    method = f"tokenizer {meta['tokenizer']}" if meta["tokenizer"] else "the seed's estimate (no --tokenizer)"
    print(f"tokens: {meta['total_tokens']:,} total, {meta['avg_token_per_line']:,.1f} per line by {method}; "
          f"language {meta['language']}")
    for reason, count in meta["skipped"].items():
        first = first_bad.get(reason)
        print(f"skipped {count:,} lines: {reason}" + (f" (first at {first})" if first else ""), file=sys.stderr)
    for what, count in meta["normalized"].items():
        print(f"normalized: {what} {count:,}", file=sys.stderr)


def _run_sharded(args: argparse.Namespace, options) -> int:
    from pathlib import Path

    from fm9g.core.errors import Fm9gError
    from fm9g.index.executors import build_all
    from fm9g.index.shards import build_shard, first_bad_lines, parse_shard

    if args.shard and args.shards:
        raise Fm9gError("give --shard I/N (one task) or --shards N (all of them), not both", where="--shard")
    _prepared_test_split(args.input)  # refuses the train.jsonl of an unfinished sharded prepare
    if args.shard:
        if args.executor != "local":
            raise Fm9gError("--executor ray runs every shard; it takes --shards N, not --shard", where="--executor",
                            fix=f"fm9g index ... --shards {args.shard.partition('/')[2] or 'N'} --executor ray")
        if args.force:
            raise Fm9gError("--force with --shard would delete the other tasks' shards", where="--force",
                            fix="delete the output directory once before starting the tasks (or pass --force to --shards N)")
        index, count = parse_shard(args.shard)
        outcome = build_shard(args.input, args.output, index, count, options)
        done = "built" if outcome.built else "already complete, skipped"
        record = outcome.record
        print(f"shard {index}/{count} ({outcome.name}): {done}: {record['nlines']:,} lines, "
              f"{record['nbytes'] / 1e6:,.1f} MB in {outcome.seconds:.1f} s")
        for reason, where in (record.get("first_bad") or {}).items():
            print(f"skipped lines: {reason} (first at {where})", file=sys.stderr)
        if (Path(args.output) / "meta.json").is_file():
            _summarize_sharded(Path(args.output), first_bad_lines(Path(args.output)))
            _index_test_split(args.input, args.output, options)
        return 0
    if args.shards is None:
        raise Fm9gError("--executor ray needs --shards N", where="--executor", fix="add --shards N (N >= the cluster's CPUs)")
    outcomes = build_all(args.input, args.output, args.shards, options, executor=args.executor, address=args.address)
    built = sum(outcome.built for outcome in outcomes)
    print(f"{built} of {len(outcomes)} shards built ({len(outcomes) - built} were already complete) by {args.executor}")
    _summarize_sharded(Path(args.output), first_bad_lines(Path(args.output)))
    _index_test_split(args.input, args.output, options)
    return 0


def _finalize(directory: str, options) -> int:
    from pathlib import Path

    from fm9g.index.shards import finalize_dataset, first_bad_lines, read_plan

    finalize_dataset(directory)
    _summarize_sharded(Path(directory), first_bad_lines(Path(directory)))
    plan = read_plan(Path(directory))
    test_options = type(options)(**{**options.__dict__, "tokenizer": plan["options"]["tokenizer"],
                                    "language": plan["options"]["language"]})
    _index_test_split([item["path"] for item in plan["inputs"]], directory, test_options)
    return 0


def _summarize_sharded(directory, first_bad: dict[str, str]) -> None:
    import json

    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    print(f"sharded index complete: {meta['nlines']:,} lines ({meta['nbytes'] / 1e6:,.1f} MB) in "
          f"{meta['sharded']['count']} shards under {directory}")
    _statistics(meta, first_bad)
