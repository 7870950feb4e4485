"""``fm9g prepare``: raw data → ``{"input", "output"}`` records through an adapter plugin."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "prepare"
HELP = "convert raw data (text, JSON, JSON Lines) into train/test JSONL records with an adapter plugin"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", "-a", help="adapter plugin (see: fm9g plugins --kind adapter; required)")
    parser.add_argument("--input", "-i", metavar="FILE", help="raw file: text, JSON array/object or JSONL (required)")
    parser.add_argument("--output", "-o", metavar="DIR",
                        help="new (or empty) directory for train.jsonl, test.jsonl and prepare_report.json, "
                             "written together")
    parser.add_argument("--split", metavar="test=F",
                        help="hold out a test split: a fraction (test=0.05) or a count (test=500), as the seed does")
    parser.add_argument("--seed", type=int, default=3014, help="split seed (default 3014, the seed's)")
    parser.add_argument("--option", "-O", action="append", default=[], metavar="KEY=VALUE",
                        help="adapter option; VALUE is read as JSON when it parses (true, 3, \"x\"), else as text")
    parser.add_argument("--map", metavar="input=SRC,output=SRC",
                        help="field mapping for adapters with a 'map' option (jsonl), e.g. input=question,output=answer")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output directory (only one that fm9g wrote)")
    parser.add_argument("--no-progress", action="store_true",
                        help="never show progress (no bar on a terminal, no plain lines in a log)")
    sharding = parser.add_argument_group(
        "sharded prepare (N tasks over byte ranges of a text or JSON Lines input; a JSON array goes whole to one)")
    sharding.add_argument("--shard", metavar="I/N",
                          help="prepare only shard I (0 <= I < N) of N: one task of a job array, e.g. "
                               "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; the task completing the last "
                               "shard merges train.jsonl/test.jsonl, equal to one process's")
    sharding.add_argument("--shards", type=int, metavar="N", help="prepare all N shards, then merge")
    sharding.add_argument("--executor", choices=["local", "ray"], default="local",
                          help="where --shards runs its tasks: one after another here (local), or as Ray tasks "
                               "(ray; needs pip install 'fm9g[ray]' and a file system every node sees)")
    sharding.add_argument("--address", metavar="ADDR",
                          help="the Ray cluster for --executor ray (auto: the running one; default: $RAY_ADDRESS, "
                               "else a local cluster for this run)")
    sharding.add_argument("--finalize", metavar="DIR",
                          help="merge the sharded prepare DIR once all its shards are complete (else say which are missing)")


def parse_options(pairs: list[str], mapping: str | None) -> dict:
    """``["language=zh", "include_cot=true"]`` and ``"input=q,output=a"`` → the adapter options dict."""
    from fm9g.core.errors import Fm9gError

    options: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise Fm9gError(f"'{pair}' is not KEY=VALUE", where="--option", fix="write e.g. --option language=zh")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    if mapping:
        fields = {}
        for part in mapping.split(","):
            target, sep, source = part.partition("=")
            if not sep or not target.strip() or not source.strip():
                raise Fm9gError(f"'{part}' is not TARGET=SOURCE", where="--map", fix="write --map input=question,output=answer")
            fields[target.strip()] = source.strip()
        options["map"] = fields
    return options


def run(args: argparse.Namespace) -> int:
    from fm9g.core.errors import Fm9gError
    from fm9g.prepare.prepare import parse_split, prepare

    if args.finalize:
        from fm9g.prepare.shards import finalize_prepare

        _summarize(finalize_prepare(args.finalize), args.finalize)
        return 0
    for flag, value in (("--adapter", args.adapter), ("--input", args.input), ("--output", args.output)):
        if not value:
            raise Fm9gError(f"{flag} is required", where=flag, fix="fm9g prepare --adapter NAME --input FILE --output DIR")
    test_size = parse_split(args.split) if args.split else None
    if args.shard or args.shards or args.executor != "local":
        return _run_sharded(args, test_size)
    result = prepare(args.input, args.output, args.adapter, parse_options(args.option, args.map),
                     test_size=test_size, seed=args.seed, force=args.force,
                     progress=False if args.no_progress else None)
    _summarize(result, args.output)
    return 0


def _run_sharded(args: argparse.Namespace, test_size) -> int:
    from fm9g.core.errors import Fm9gError
    from fm9g.core.sharding import parse_shard
    from fm9g.prepare.shards import PrepareJob, prepare_all, prepare_shard

    if args.shard and args.shards:
        raise Fm9gError("give --shard I/N (one task) or --shards N (all of them), not both", where="--shard")
    progress = False if args.no_progress else None
    if args.shard:
        if args.executor != "local":
            raise Fm9gError("--executor ray runs every shard; it takes --shards N, not --shard", where="--executor",
                            fix=f"fm9g prepare ... --shards {args.shard.partition('/')[2] or 'N'} --executor ray")
        if args.force:
            raise Fm9gError("--force with --shard would delete the other tasks' shards", where="--force",
                            fix="delete the output directory once before starting the tasks (or pass --force to --shards N)")
        index, count = parse_shard(args.shard)
    elif args.shards is None:
        raise Fm9gError("--executor ray needs --shards N", where="--executor", fix="add --shards N (N >= the cluster's CPUs)")
    else:
        index, count = None, args.shards
    job = PrepareJob(args.input, args.output, args.adapter, parse_options(args.option, args.map), test_size,
                     args.seed, count)
    if index is None:
        outcomes, result = prepare_all(job, executor=args.executor, address=args.address, force=args.force,
                                       progress=progress)
        built = sum(outcome.built for outcome in outcomes)
        print(f"{built} of {len(outcomes)} shards prepared ({len(outcomes) - built} were already complete) "
              f"by {args.executor}")
        _summarize(result, args.output)
        return 0
    from pathlib import Path

    from fm9g.prepare.prepare import PrepareResult
    from fm9g.prepare.shards import merged_report

    already_merged = merged_report(Path(args.output)) is not None
    outcome = prepare_shard(job, index, progress=progress)
    done = ("the prepare is already merged, skipped" if already_merged else
            f"prepared: {outcome.items:,} items" if outcome.built else f"already complete, skipped: {outcome.items:,} items")
    print(f"shard {index}/{count} ({outcome.name}): {done} in {outcome.seconds:.1f} s")
    report = merged_report(Path(args.output))
    if outcome.merge is not None:
        _summarize(outcome.merge, args.output)
    elif report is not None:
        _summarize(PrepareResult(report), args.output)
    return 0


def _summarize(result, output: str) -> None:
    report = result.report
    split = report["split"]
    where = ", ".join(f"{split[name]:,} {name}" for name in ("train", "test")) if split else f"{report['kept']:,} train"
    print(f"prepared {report['kept']:,} of {report['items']:,} items with adapter {report['adapter']} "
          f"into {output} ({where})")
    for reason, count in report["dropped"].items():
        first = result.first_dropped.get(reason)
        print(f"dropped {count:,}: {reason}" + (f" (first: {first})" if first else ""), file=sys.stderr)
