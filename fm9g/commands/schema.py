"""``fm9g schema NAME``: print a JSON Schema (for editors and other tools)."""

from __future__ import annotations

import argparse
import json

NAME = "schema"
HELP = "print the JSON Schema of mix manifests, meta.json, train configs or checkpoint.json"
ORDER = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="mix, meta, train or checkpoint (omit to list the names)")


def run(args: argparse.Namespace) -> int:
    from fm9g.core.schemas import SCHEMA_NAMES, load_schema, schema_dir

    if args.name is None:
        for name in SCHEMA_NAMES:
            print(f"{name}\t{schema_dir() / f'{name}.schema.json'}")
        return 0
    print(json.dumps(load_schema(args.name), indent=2, ensure_ascii=False))
    return 0
