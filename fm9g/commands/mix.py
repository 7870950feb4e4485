"""``fm9g mix --manifest mix.json``: plan, preview, run and report a mixture; optionally materialize it.

Validates the manifest (every problem at once), resolves its plugins, prints the plan for the
budget (``--tokens``, ``--train-iters`` or ``--samples``), runs the stream with a progress bar (plain
lines in a log), prints the realized mixture and writes ``mix_report.json``. ``--output DIR`` writes the packed
global stream for ``fm9g train`` (``data.mixture``), ``--preview N`` shows samples as the model
sees them, ``--plot FILE.png`` draws realized against target shares. ``fm9g mix search`` learns the
weights from proxy runs (:mod:`fm9g.commands._mix_search`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

NAME = "mix"
HELP = "plan, preview, run and report a data mixture; --output materializes the packed stream"
ORDER = 50
DEFAULT_SAMPLES = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", help="mix.json (the seed's list form or fm9g's object form); default: "
                                           "the train config's data.manifest")
    parser.add_argument("--train-config", metavar="FILE",
                        help="describe what this train config's run will get: its max_length, batch_size, "
                             "tokenizer and trust_scripts, and (without another budget) train_iters × grad_accum "
                             "global batches")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=int, metavar="N", help="run until N non-padding tokens")
    budget.add_argument("--train-iters", type=int, metavar="N", help="run N global batches (one per train iteration)")
    budget.add_argument("--samples", type=int, metavar="N",
                        help=f"run until N samples are packed (default {DEFAULT_SAMPLES:,} when no budget is given)")
    parser.add_argument("--preview", type=int, default=0, metavar="N",
                        help="print N samples as the model sees them: masked and trained runs (turn by turn)")
    parser.add_argument("--preview-tokens", type=int, default=0, metavar="N",
                        help="print the first N positions of the first packed batch: ids, tokens, labels, BOS/EOS "
                             "and where each sample begins")
    parser.add_argument("--plot", metavar="FILE.png", help="draw realized vs target token share over the run")
    parser.add_argument("--output", metavar="DIR", help="materialize the packed stream into DIR (for fm9g train)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --output directory (one fm9g wrote) or report file")
    parser.add_argument("--report", metavar="FILE",
                        help="where to write mix_report.json (default: ./mix_report.json, or DIR/ with --output)")
    parser.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    parser.add_argument("--trust-scripts", action="store_true",
                        help="allow seed transform scripts named by path in the manifest (runs their code)")
    parser.add_argument("--seed", type=int, help="override the manifest's seed (seed list form: default 42)")
    parser.add_argument("--max-length", type=int, help="override max_length (seed list form: default 4096)")
    parser.add_argument("--batch-size", type=int, help="override batch_size (seed list form: default 1)")
    parser.add_argument("--tokenizer", help="override the tokenizer spec: byte, hf:PATH, sp:PATH.model")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="tokenize ahead in N worker processes (the output does not depend on N)")
    from fm9g.commands import _mix_search

    modes = parser.add_subparsers(dest="mix_mode", metavar="MODE", title="modes (optional)")
    search = modes.add_parser("search", help=_mix_search.HELP, description=_mix_search.HELP)
    search.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    _mix_search.add_arguments(search)
    search.set_defaults(run=_mix_search.run)


def _train_settings(args: argparse.Namespace) -> dict:
    """The packing a train config gives its run (and its manifest and budget, where the command line
    names none); ``{}`` without ``--train-config``."""
    if not args.train_config:
        return {}
    from fm9g.backends.training.config import load_train_config

    config = load_train_config(args.train_config)
    if not args.manifest and config["data"].get("manifest"):
        args.manifest = config["data"]["manifest"]
    if not (args.tokens or args.train_iters or args.samples):
        args.train_iters = config["train_iters"] * config["grad_accum"]
    return {key: config[key] for key in ("max_length", "batch_size", "tokenizer", "trust_scripts")}


def _source(key: str, args: argparse.Namespace, train: dict, manifest) -> str:
    """Where the run's ``max_length`` / ``batch_size`` comes from, for the header."""
    if getattr(args, key) is not None:
        return f"--{key.replace('_', '-')}"
    if key in train:
        return f"from {args.train_config}"
    return "from the manifest" if manifest.form == "fm9g" else "the seed list form's default"


def _budget(args: argparse.Namespace, capacity: int) -> tuple[float | None, str]:
    if args.tokens:
        return float(args.tokens), f"--tokens {args.tokens:,}"
    if args.train_iters:
        return float(args.train_iters * capacity), f"--train-iters {args.train_iters:,} × {capacity:,} tokens (at most)"
    return None, ""


def _done(args: argparse.Namespace, recorder) -> bool:
    """Whether the budget is spent; a ``--samples`` budget is the stream's own ``max_samples``
    (it ends after exactly that many samples, mid-batch if need be)."""
    if args.tokens:
        return recorder.total_tokens >= args.tokens
    if args.train_iters:
        return recorder.batches >= args.train_iters
    return False


def _progress_total(args: argparse.Namespace) -> tuple[int, str]:
    if args.tokens:
        return args.tokens, "tokens"
    if args.train_iters:
        return args.train_iters, "batches"
    return args.samples or DEFAULT_SAMPLES, "samples"


@contextlib.contextmanager
def _log_departures() -> Iterator[None]:
    """Show the mixer's one-line notices (a dataset leaving the mix, a skipped sample) on stderr
    while the run lasts; the handler goes with the run, so it never writes to a stale stderr."""
    import logging

    logger = logging.getLogger("fm9g.mixer")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fm9g mix: %(message)s"))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fm9g.core.atomic import write_json_atomic
    from fm9g.core.errors import Fm9gError
    from fm9g.core.progress import progress_bar
    from fm9g.mixer.manifest import load_manifest
    from fm9g.mixer.materialized import MaterializedWriter
    from fm9g.mixer.plan import make_plan, print_plan
    from fm9g.mixer.preview import preview_samples, preview_tokens, print_preview, print_token_preview
    from fm9g.mixer.report import MixRecorder, print_report, realized_report
    from fm9g.mixer.stream import MixtureStream

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    for value, flag in ((args.tokens, "--tokens"), (args.train_iters, "--train-iters"), (args.samples, "--samples"),
                        (args.max_length, "--max-length"), (args.batch_size, "--batch-size")):
        if value is not None and value < 1:
            raise Fm9gError(f"{flag} must be at least 1, got {value}", where=flag)
    train = _train_settings(args)
    if not args.manifest:
        raise Fm9gError("no manifest", where="fm9g mix", fix="pass --manifest mix.json, or --train-config whose "
                                                          "data.manifest names one")
    manifest = load_manifest(args.manifest)
    packing_source = {key: _source(key, args, train, manifest) for key in ("max_length", "batch_size")}
    manifest = manifest.with_overrides(
        seed=args.seed, max_length=args.max_length or train.get("max_length"),
        batch_size=args.batch_size or train.get("batch_size"), tokenizer=args.tokenizer or train.get("tokenizer"))
    for warning in manifest.warnings:
        console.print(f"[yellow]warning:[/yellow] {args.manifest}: {warning}")
    report_path = Path(args.report) if args.report else (Path(args.output) / "mix_report.json" if args.output
                                                         else Path("mix_report.json"))
    if not args.plan_only and not args.output and report_path.exists() and not args.force:
        raise Fm9gError("the report exists", where=str(report_path),
                        fix="pass --force to replace it, or --report PATH to write another")
    trust_scripts = args.trust_scripts or bool(train.get("trust_scripts"))

    samples = None if args.tokens or args.train_iters else args.samples or DEFAULT_SAMPLES

    def open_stream(workers: int = 0) -> MixtureStream:
        return MixtureStream.from_manifest(manifest, trust_scripts=trust_scripts, workers=workers,
                                           max_samples=samples)

    stream = open_stream()
    console.print(f"[bold]{args.manifest}[/bold]: {len(manifest.datasets)} datasets ({manifest.form} form), "
                  f"tokenizer {stream.tokenizer.spec}, seed {manifest.seed}; packing max_length {stream.max_length} "
                  f"({packing_source['max_length']}), batch_size {stream.batch_size} ({packing_source['batch_size']})")
    budget_tokens, budget_note = _budget(args, stream.capacity)
    plan = make_plan(stream, budget_tokens=budget_tokens, budget_note=budget_note, budget_samples=samples)
    print_plan(plan, console)
    if args.plan_only:
        return 0
    if args.preview:
        print_preview(preview_samples(open_stream(), stream.task_names, stream.tokenizer, args.preview), console)
    if args.preview_tokens:
        first = next(iter(open_stream()))
        print_token_preview(preview_tokens(first, stream.task_names, stream.tokenizer, args.preview_tokens), console)
    if args.workers:
        stream = open_stream(args.workers)
    writer = MaterializedWriter(args.output, capacity=stream.capacity, force=args.force) if args.output else None
    recorder = MixRecorder(stream.task_names, stream.tokenizer.bos_id)
    total, unit = _progress_total(args)
    started = time.perf_counter()
    try:
        with _log_departures(), progress_bar(total=total, unit=f" {unit}", desc="mixing", file=sys.stderr) as bar:
            for batch in stream:
                recorder.add(batch)
                if writer is not None:
                    writer.add(batch)
                done = {"tokens": recorder.total_tokens, "batches": recorder.batches,
                        "samples": recorder.total_samples}[unit]
                bar.update(min(done, total) - bar.n)
                if _done(args, recorder):
                    break
        seconds = time.perf_counter() - started
        report = realized_report(recorder, stream, seconds=seconds, plan=plan)
        if writer is not None:
            settings = {"task_names": stream.task_names, "tokenizer": stream.tokenizer.spec,
                        "tokenizer_fingerprint": stream.tokenizer.fingerprint, "pad_id": stream.tokenizer.pad_id,
                        "vocab_size": stream.tokenizer.vocab_size,
                        "max_length": stream.max_length, "batch_size": stream.batch_size,
                        "manifest": manifest.as_json()}
            writer.finish(settings=settings, final_state=stream.state_dict(), report=report)
            writer = None
    finally:
        stream.close()
        if writer is not None:
            writer.abort()
    print_report(report, console)
    if not (args.output and not args.report):
        write_json_atomic(report_path, report)
    console.print(f"report: {report_path}" + (f"; packed stream: {args.output}" if args.output else ""))
    if args.plot:
        from fm9g.mixer.plot import plot_shares

        console.print(f"plot: {plot_shares(recorder.history, report, args.plot)}")
    return 0
