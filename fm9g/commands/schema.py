"""``fm9g schema NAME [--format yaml]``: print a JSON Schema (for editors and other tools).

Train configs and mix manifests may be written in YAML as well as JSON; the schema is the same,
and ``--format yaml`` prints it in YAML for tools that want it so.
"""

from __future__ import annotations

import argparse
import json

NAME = "schema"
HELP = "print the JSON Schema of mix manifests, meta.json, train configs or checkpoint.json (as JSON or YAML)"
ORDER = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="mix, meta, train or checkpoint (omit to list the names)")
    parser.add_argument("--format", dest="fmt", choices=["json", "yaml"], default="json",
                        help="print the schema as JSON (default) or YAML")


def run(args: argparse.Namespace) -> int:
    from fm9g.core.schemas import SCHEMA_NAMES, load_schema, schema_dir

    if args.name is None:
        for name in SCHEMA_NAMES:
            print(f"{name}\t{schema_dir() / f'{name}.schema.json'}")
        return 0
    schema = load_schema(args.name)
    if args.fmt == "yaml":
        import yaml

        print(yaml.safe_dump(schema, sort_keys=False, allow_unicode=True, width=100), end="")
    else:
        print(json.dumps(schema, indent=2, ensure_ascii=False))
    return 0
