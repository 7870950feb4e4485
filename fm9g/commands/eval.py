"""``fm9g eval``: held-out loss and perplexity per task of any trained weights, as ``fm9g train`` reports them.

The weights: a training checkpoint (full or LoRA), an exported Hugging Face directory, or a seed
``.pt`` in a preset. The held-out sets are found as in training: from a checkpoint's own train
config (its mixture, its ``eval.manifest``), or from ``--manifest`` (a mix manifest: each task's
``eval_path`` or indexed test split) and ``--eval-manifest`` (entries that are the held-out sets).
Evaluation packs and computes exactly as the in-training evaluation does, so the numbers of a
checkpoint equal those its run logged at that step.
"""

from __future__ import annotations

import argparse
import sys

NAME = "eval"
HELP = "held-out loss and perplexity per task of a checkpoint, an exported model or seed weights"
ORDER = 65


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("weights (exactly one)")
    source.add_argument("--checkpoint", metavar="DIR", help="a training checkpoint (step-NNNNNNNN), full or LoRA")
    source.add_argument("--model", metavar="HF_DIR", help="a Hugging Face model directory (e.g. fm9g export's)")
    source.add_argument("--seed-pt", metavar="FILE", help="seed weights (.pt, bmtrain names); needs --preset")
    parser.add_argument("--preset", metavar="NAME", help="the model shape of --seed-pt (e.g. fm9g-7b)")
    parser.add_argument("--base", metavar="PATH", help="a LoRA checkpoint's base weights, if its run did not store them")
    parser.add_argument("--manifest", metavar="MIX", help="the mixture whose tasks to evaluate (default: the "
                                                          "checkpoint's); held-out sets: eval_path or <path>/test")
    parser.add_argument("--eval-manifest", metavar="FILE", help="a manifest whose entries are the tasks' held-out sets")
    parser.add_argument("--tokenizer", metavar="SPEC", help="default: the checkpoint's run's, else the manifest's")
    parser.add_argument("--max-length", type=int, help="default: the checkpoint's run's, else the manifest's")
    parser.add_argument("--batch-size", type=int, help="packed rows per batch (default: as max-length)")
    parser.add_argument("--eval-tokens", type=int, help="at most the first N target tokens of each task (0: all)")
    parser.add_argument("--autocast", choices=["none", "bf16"],
                        help="compute under bf16 autocast (default on a GPU, as training there does) or not")
    parser.add_argument("--report", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing --report file")
    parser.add_argument("--trust-scripts", action="store_true", help="allow seed transform scripts named by path")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model config that needs its own Python code (auto_map)")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _eval_config(args: argparse.Namespace, train_config: dict | None):
    """The keys of a train config that evaluation reads, from the run's config and the command line."""
    from pathlib import Path

    from fm9g.core.errors import Fm9gError
    from fm9g.mixer.manifest import load_manifest

    config = dict(train_config or {})
    if args.manifest:
        config["data"] = {"manifest": str(Path(args.manifest).resolve())}
    config.setdefault("data", {})
    if args.eval_manifest:
        config["eval"] = {"manifest": str(Path(args.eval_manifest).resolve())}
    named = config["data"].get("manifest") or (config.get("eval") or {}).get("manifest")
    if not named:
        raise Fm9gError("no tasks to evaluate", where="command line",
                        fix="pass --manifest mix.json (or --eval-manifest eval.json), or a --checkpoint of a run")
    manifest = load_manifest(named)
    for key, value in (("max_length", args.max_length), ("batch_size", args.batch_size),
                       ("eval_tokens", args.eval_tokens)):
        if value is not None:
            config[key] = value
    config.setdefault("max_length", manifest.max_length)
    config.setdefault("batch_size", manifest.batch_size)
    config.setdefault("eval_tokens", 0)
    config["trust_scripts"] = args.trust_scripts
    return config, manifest.tokenizer


def _table(record: dict, out) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out evaluation ({record['target_tokens']:,} target tokens)")
    for column in ("task", "rows", "samples", "target tokens", "loss", "perplexity", "skipped"):
        table.add_column(column, justify="left" if column in ("task", "skipped") else "right")

    def number(value, digits=4):
        return "n/a" if value is None else f"{value:.{digits}f}"

    for name, task in record["tasks"].items():
        skipped = ", ".join(f"{reason} {count}" for reason, count in task["skipped"].items()) or "-"
        table.add_row(name, f"{task['rows']:,}", f"{task['samples']:,}", f"{task['target_tokens']:,}",
                      number(task["loss"]), number(task["perplexity"], 2), skipped)
    table.add_row("all (token-weighted)", "", "", f"{record['target_tokens']:,}", number(record["loss"]),
                  number(record["perplexity"], 2), "")
    table.add_row("all (mixture-weighted)", "", "", "", number(record["weighted_loss"]), "", "")
    Console(file=out, width=120).print(table)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from fm9g.backends.export.inference import load_model
    from fm9g.backends.training.collectives import TorchDistributed
    from fm9g.backends.training.evaluate import Evaluator, held_out_batches
    from fm9g.core.atomic import write_json_atomic
    from fm9g.core.errors import Fm9gError
    from fm9g.tokenizers import load_tokenizer

    if args.report and Path(args.report).exists() and not args.force:
        raise Fm9gError("the report exists", where=f"--report {args.report}",
                        fix="pass --force to replace it, or --report PATH to write another")
    if args.report and Path(args.report).is_dir():
        raise Fm9gError("is a directory", where=f"--report {args.report}", fix="name a JSON file")
    comm = TorchDistributed()
    loaded = load_model(checkpoint=args.checkpoint, hf_dir=args.model, seed_pt=args.seed_pt, preset=args.preset,
                        base=args.base, device=comm.device, trust_remote_code=args.trust_remote_code)
    config, manifest_tokenizer = _eval_config(args, loaded.train_config)
    tokenizer = load_tokenizer(args.tokenizer or loaded.tokenizer_spec or manifest_tokenizer)
    held_out = held_out_batches(config, tokenizer)
    autocast = args.autocast or ("bf16" if comm.device.type == "cuda" else "none")
    evaluator = Evaluator(held_out, comm, autocast_dtype=torch.bfloat16 if autocast == "bf16" else None)
    if comm.is_main:
        print(f"fm9g eval — {loaded.description}; tokenizer {tokenizer.spec}; {config['batch_size']}×"
              f"{config['max_length']} packed rows on {comm.device} × {comm.world_size}", file=sys.stderr)
        for line in held_out.plan.describe():
            print(f"  {line}", file=sys.stderr)
    show = not args.no_progress and comm.is_main and sys.stderr.isatty()
    with tqdm(desc="eval", unit="tok", unit_scale=True, disable=not show, file=sys.stderr) as bar:
        record = evaluator(loaded.model, loaded.step or 0, on_batch=bar.update)
    comm.close()
    if not comm.is_main:
        return 0
    _table(record, sys.stdout)
    if args.report:
        write_json_atomic(args.report, {"model": loaded.description, "tokenizer": tokenizer.spec,
                                        "held_out": held_out.plan.describe(), "evaluation": record})
        print(f"wrote {args.report}", file=sys.stderr)
    return 0
