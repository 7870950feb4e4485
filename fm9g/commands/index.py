"""``fm9g index``: build a seed-compatible indexed dataset directory from JSONL records."""

from __future__ import annotations

import argparse
import sys

NAME = "index"
HELP = "index JSONL records into a seed-compatible dataset directory (data.jsonl, index, index.h5, meta.json)"
ORDER = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", nargs="+", required=True, metavar="FILE_OR_GLOB",
                        help="JSONL file(s) of records with string 'input' and 'output'; globs allowed")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="directory to create (not the input's directory)")
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
    summary = build_index(args.input, args.output, options)
    _report(summary)
    held_out = _prepared_test_split(args.input)
    if held_out is not None:
        from pathlib import Path

        from fm9g.mixer.held_out import HELD_OUT_DIR

        print(f"held-out split: {held_out} beside the input (fm9g prepare --split); indexing it too")
        _report(build_index([held_out], Path(args.output) / HELD_OUT_DIR, options))
    return 0


def _prepared_test_split(inputs: list[str]):
    """The ``test.jsonl`` that ``fm9g prepare --split`` wrote beside the one ``train.jsonl`` indexed, if any:
    ``fm9g train`` evaluates each task on the indexed test split inside its training index."""
    from pathlib import Path

    if len(inputs) != 1 or Path(inputs[0]).name != "train.jsonl":
        return None
    candidate = Path(inputs[0]).with_name("test.jsonl")
    return candidate if candidate.is_file() and candidate.with_name("prepare_report.json").is_file() else None


def _report(summary) -> None:
    meta = summary.meta
    print(f"indexed {meta['nlines']:,} lines ({meta['nbytes'] / 1e6:,.1f} MB) into {summary.output} "
          f"in {summary.seconds:.1f} s ({summary.megabytes_per_second:,.1f} MB/s, {summary.workers} workers)")
    method = f"tokenizer {meta['tokenizer']}" if meta["tokenizer"] else "the seed's estimate (no --tokenizer)"
    print(f"tokens: {meta['total_tokens']:,} total, {meta['avg_token_per_line']:,.1f} per line by {method}; "
          f"language {meta['language']}")
    for reason, count in meta["skipped"].items():
        first = summary.first_bad.get(reason)
        print(f"skipped {count:,} lines: {reason}" + (f" (first at {first})" if first else ""), file=sys.stderr)
    for what, count in meta["normalized"].items():
        print(f"normalized: {what} {count:,}", file=sys.stderr)
