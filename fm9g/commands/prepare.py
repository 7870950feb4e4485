"""``fm9g prepare``: raw data → ``{"input", "output"}`` records through an adapter plugin."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "prepare"
HELP = "convert raw data (text, JSON, JSON Lines) into train/test JSONL records with an adapter plugin"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", "-a", required=True, help="adapter plugin (see: fm9g plugins --kind adapter)")
    parser.add_argument("--input", "-i", required=True, metavar="FILE", help="raw file: text, JSON array/object or JSONL")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
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
    from fm9g.prepare.prepare import parse_split, prepare

    test_size = parse_split(args.split) if args.split else None
    result = prepare(args.input, args.output, args.adapter, parse_options(args.option, args.map),
                     test_size=test_size, seed=args.seed, force=args.force,
                     progress=False if args.no_progress else None)
    report = result.report
    split = report["split"]
    where = ", ".join(f"{split[name]:,} {name}" for name in ("train", "test")) if split else f"{report['kept']:,} train"
    print(f"prepared {report['kept']:,} of {report['items']:,} items with adapter {report['adapter']} "
          f"into {args.output} ({where})")
    for reason, count in report["dropped"].items():
        first = result.first_dropped.get(reason)
        print(f"dropped {count:,}: {reason}" + (f" (first: {first})" if first else ""), file=sys.stderr)
    return 0
