"""``fm9g plugins``: list every registered plugin with its kind, version and distribution."""

from __future__ import annotations

import argparse
import json

NAME = "plugins"
HELP = "list installed plugins (adapters, transforms, tokenizers, backends, delta engines)"
ORDER = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--kind", choices=["adapter", "transform", "tokenizer", "backend", "delta_engine", "logger"])


def run(args: argparse.Namespace) -> int:
    from fm9g.core.plugins import registry

    infos = registry().all(args.kind)
    if args.json:
        print(json.dumps([info.as_json() for info in infos], indent=2, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("kind", "name", "version", "distribution", "description", box=None)
    for info in infos:
        table.add_row(info.kind, info.name, info.version, info.distribution, info.description)
    Console(width=160).print(table)
    return 0
