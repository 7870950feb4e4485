"""``fm9g install-bmtrain``: build BMTrain 1.0.1 for the local GPU and CUDA, then install it."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "install-bmtrain"
HELP = "build and install BMTrain 1.0.1 from its sdist for this machine's GPU (needs nvcc)"
ORDER = 90


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sdist", type=Path, help="a local bmtrain-1.0.1.tar.gz (default: download from PyPI)")
    parser.add_argument("--arch", action="append",
                        help="CUDA architecture to build for, e.g. 90 (repeatable; default: the visible GPUs')")
    parser.add_argument("--wheel-dir", type=Path, help="also keep the built wheel here")
    parser.add_argument("--no-install", action="store_true", help="only build the wheel (needs --wheel-dir)")


def run(args: argparse.Namespace) -> int:
    from fm9g.backends.bmtrain_backend.install import build_and_install

    build_and_install(args.sdist, args.arch, install=not args.no_install, wheel_dir=args.wheel_dir)
    return 0
