"""``fm9g train --config train.json [key=value ...]``: train a causal LM on a mixture, full or LoRA.

With ``--nproc-per-node N`` (or ``--nnodes``) fm9g re-launches itself under ``torch.distributed.run``
(torchrun); each process then runs this same command with torchrun's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

NAME = "train"
HELP = "train a causal LM (full or LoRA) on a mix manifest or a materialized mixture"
ORDER = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="train config JSON (schemas/train.schema.json)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, values parsed as JSON when possible: lr=1e-4 delta.lora_r=8")
    parser.add_argument("--trust-scripts", action="store_true",
                        help="allow the mix manifest's transform scripts (Python files) to run; the same as "
                             "trust_scripts=true")
    parser.add_argument("--resume", metavar="DIR|auto",
                        help="continue from a checkpoint directory, or 'auto': the latest complete one under 'save'")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even though data, model, tokenizer, seed or batch geometry changed")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes (GPUs) per node; >1 starts torchrun")
    parser.add_argument("--nnodes", type=int, default=1, help="number of nodes (run the same command on each)")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank (multi-node)")
    parser.add_argument("--master-addr", default="127.0.0.1", help="rank-0 node address (multi-node)")
    parser.add_argument("--master-port", type=int, default=29500, help="rank-0 node port (multi-node)")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show the progress bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")


def _torchrun_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc_per_node}"]
    if args.nnodes == 1:
        command.append("--standalone")
    else:
        command += [f"--nnodes={args.nnodes}", f"--node-rank={args.node_rank}",
                    f"--master-addr={args.master_addr}", f"--master-port={args.master_port}"]
    command += ["--module", "fm9g", "train", "--config", str(Path(args.config).resolve()), *args.overrides]
    if args.trust_scripts:
        command.append("--trust-scripts")
    if args.allow_config_change:
        command.append("--allow-config-change")
    if args.resume:
        command += ["--resume", args.resume if args.resume == "auto" else str(Path(args.resume).resolve())]
    if args.progress is not None:
        command.append("--progress" if args.progress else "--no-progress")
    if getattr(args, "debug", False):
        command.append("--debug")
    return command


def _launch(command: list[str]) -> int:
    """Run torchrun and return its exit status. torchrun starts its workers in sessions of their own,
    so only torchrun can stop them: a SIGTERM to fm9g (``kill``, Slurm, a container stop) is passed on
    to it and fm9g waits while it stops them (SIGTERM, then SIGKILL after its shutdown timeout).
    Ctrl-C reaches torchrun through the terminal's process group, so fm9g ignores SIGINT meanwhile
    (passing it on too would interrupt torchrun's shutdown). ``subprocess.call`` would SIGKILL
    torchrun on an interrupt and leave the workers training."""
    process = subprocess.Popen(command)
    if threading.current_thread() is not threading.main_thread():
        return process.wait()
    handlers = {signal.SIGTERM: lambda signum, frame: process.send_signal(signum), signal.SIGINT: signal.SIG_IGN}
    previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
    try:
        return process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


CONTINUITY_KEYS = ("data", "model", "tokenizer", "seed", "batch_size", "max_length", "delta")
"""Train config keys whose change makes a resumed run another run (other data, packing or model);
changing the others (train_iters, lr, save, ...) is an ordinary continuation — grad_accum included,
which an elastic resume on another number of processes changes to keep the global batch."""


def _change(key: str, before, after) -> str:
    def short(value) -> str:
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"{key} ({short(before)} -> {short(after)})"


def _resume_point(resume: str | None, config: dict, out, *, allow_change: bool):
    """The checkpoint ``--resume`` names (read once, handed to the backend). A change of the config
    since the checkpoint is said key by key; one that breaks the run's continuity is refused unless
    ``allow_change``."""
    from fm9g.backends.training.resume import ResumePoint
    from fm9g.core.errors import Fm9gError

    is_main = int(os.environ.get("RANK", "0")) == 0
    point = ResumePoint.find(resume, config["save"],
                             warn=(lambda text: print(f"fm9g train: warning: {text}", file=out)) if is_main else None)
    if resume == "auto" and point is None and is_main:
        print(f"fm9g train: no complete checkpoint under {config['save']}; starting from step 0", file=out)
    if point is None:
        return None
    stored = point.manifest["config"]
    changed = [key for key in point.changed_keys(config) if key != "save"]
    breaking = [_change(key, stored.get(key), config.get(key)) for key in changed if key in CONTINUITY_KEYS]
    if breaking and not allow_change:
        raise Fm9gError(f"the config differs from the checkpoint's in {', '.join(breaking)}: the resumed run "
                        "would not continue the same run", where=str(point.directory),
                        fix="restore those values, or pass --allow-config-change to resume anyway")
    if changed and is_main:
        described = ", ".join(_change(key, stored.get(key), config.get(key)) for key in changed)
        print(f"fm9g train: warning: resuming with a changed config: {described}", file=out)
    return point


def run(args: argparse.Namespace) -> int:
    if (args.nproc_per_node > 1 or args.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        return _launch(_torchrun_command(args))

    from fm9g.backends.training.config import check_references, load_train_config
    from fm9g.backends.training.run import RunContext
    from fm9g.core.plugins import get_plugin

    config = load_train_config(args.config, [*args.overrides, *(["trust_scripts=true"] if args.trust_scripts else [])])
    check_references(config)
    backend = get_plugin("backend", config["backend"], where="train config: backend")
    resume = _resume_point(args.resume, config, sys.stderr, allow_change=args.allow_config_change)
    context = RunContext(resume=resume, show_progress=args.progress)
    result = backend.train(config, context)
    if int(os.environ.get("RANK", "0")) == 0 and isinstance(result, dict):
        print(f"fm9g train: done at step {result.get('step')} ({result.get('tokens_seen', 0):,} tokens); "
              f"checkpoint {result.get('checkpoint')}", file=sys.stderr)
    return 0
