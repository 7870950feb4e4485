"""The one run sequence of every backend: what ``fm9g train`` does, with the backend's parts as a strategy.

:func:`train` runs, on every rank: check the save directory → open the data stream (at the resume
point's state) → tokenizer → model (built, delta applied, checkpoint weights loaded) → the
backend's setup (dtypes, activation checkpointing, sharding) → optimizer (its resumed state) → RNG
→ LR schedule → header → loop → result. What differs between backends is a
:class:`BackendStrategy`: how ranks talk, how the model is wrapped and stepped, how optimizer state
is saved and restored. Checkpoints are written by :class:`Checkpointer` in one layout for both.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch

from fm9g.backends.training import checkpoints, stop_signals
from fm9g.backends.training.batches import open_stream, stream_tokenizer
from fm9g.backends.training.collectives import Collectives
from fm9g.backends.training.evaluate import Evaluator, held_out_batches
from fm9g.backends.training.loop import LoopSettings, Optimization, Trainer, TrainState, run_loop
from fm9g.backends.training.lr_schedule import Schedule, schedule_from_config
from fm9g.backends.training.model import TrainingModel, build_training_model
from fm9g.backends.training.online_mixing import STATE_FILE as MIXING_STATE
from fm9g.backends.training.online_mixing import OnlineMixing, StreamReweighting
from fm9g.backends.training.resume import ResumePoint
from fm9g.backends.training.run_output import RunOutput, RunReport, SilentReport
from fm9g.backends.training.trackers import mixture_plan
from fm9g.backends.models.build import parameter_counts
from fm9g.core.atomic import write_json_atomic
from fm9g.core.errors import Fm9gError


@dataclass
class RunContext:
    """What ``fm9g train`` hands a backend besides the config: the resume point and where output goes."""

    resume: ResumePoint | None = None
    show_progress: bool | None = None
    out: TextIO = field(default_factory=lambda: sys.stderr)
    stream_factory: Any = None
    """``(config, rank=, world_size=, state=) -> stream``; default: the config's data (:func:`open_stream`)."""

    @property
    def output(self) -> RunOutput:
        return RunOutput(self.out, self.show_progress)

    def open_stream(self, config: dict[str, Any], *, rank: int, world_size: int) -> Any:
        """This rank's packed-batch stream, at the resume point's stream state when resuming."""
        state = self.resume.stream_state() if self.resume is not None else None
        return (self.stream_factory or open_stream)(config, rank=rank, world_size=world_size, state=state)

    def progress(self, *, total: int, initial: int = 0) -> Any:
        """A progress bar over optimizer steps (see :meth:`RunOutput.progress`)."""
        return self.output.progress(total=total, initial=initial)

    def message(self, text: str) -> None:
        """A line for the user that does not break the progress bar."""
        self.output.message(text)


@dataclass
class RunDescription:
    """How a backend runs this config: for the header, the loop and the user."""

    device: str
    precision: str
    autocast: torch.dtype | None = None
    """bf16 autocast over float32 master weights, or ``None`` (compute in the weights' dtype)."""
    notes: list[str] = field(default_factory=list)


class BackendStrategy(Protocol):
    """The parts of a run that differ between backends, called by :func:`train` in this order."""

    name: str
    """The backend's name, recorded in every checkpoint."""
    collectives: Collectives

    def base_dtype(self, config: dict[str, Any]) -> torch.dtype:
        """The dtype the frozen base weights train in (a LoRA run stores its base rounded to it)."""

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Anything the backend changes before the delta is applied (bmtrain unties embeddings)."""

    def setup_model(self, built: TrainingModel, config: dict[str, Any]) -> torch.nn.Module:
        """Dtypes, activation checkpointing, sharding or wrapping; the model to train, in train mode."""

    def make_optimization(self, model: torch.nn.Module, config: dict[str, Any]) -> Optimization:
        """The optimizer over the trainable parameters and how to step it."""

    def restore_optimizer(self, optimization: Optimization, resume: ResumePoint) -> None:
        """Load the resume point's optimizer state (either backend's format)."""

    def describe(self, config: dict[str, Any]) -> RunDescription:
        """The header's device and precision, the loop's autocast dtype, notes for the user."""

    def gather_weights(self, model: torch.nn.Module, optimization: Optimization, *,
                       trainable_only: bool) -> dict[str, torch.Tensor] | None:
        """Full float32 tensors of the (trainable) weights on rank 0 (``None`` elsewhere); a collective."""

    def save_optimizer(self, model: torch.nn.Module, optimization: Optimization, staging: Path) -> Any:
        """Write this rank's optimizer files into ``staging`` if it has any; return what rank 0 saves
        as ``optimizer.pt`` (``None`` elsewhere); a collective."""


class Checkpointer:
    """Writes the run's checkpoints: every rank calls :meth:`save`, rank 0 assembles the directory."""

    def __init__(self, config: dict[str, Any], strategy: BackendStrategy, built: TrainingModel,
                 model: torch.nn.Module, optimization: Optimization, stream: Any, schedule: Schedule,
                 mixing: OnlineMixing | None = None):
        self.config, self.strategy, self.built = config, strategy, built
        self.model, self.optimization, self.stream, self.schedule = model, optimization, stream, schedule
        self.lora, self.mixing = config["delta"], mixing

    def save(self, state: TrainState) -> None:
        comm, strategy = self.strategy.collectives, self.strategy
        staging = checkpoints.rank_staging(self.config["save"], state.step)
        if comm.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        comm.barrier()
        weights = strategy.gather_weights(self.model, self.optimization, trainable_only=bool(self.lora))
        optimizer_state = strategy.save_optimizer(self.model, self.optimization, staging)
        rng_states = comm.gather_objects(checkpoints.capture_rng_state())
        stream_states = comm.gather_objects(self.stream.state_dict())
        comm.barrier()
        if comm.is_main:
            def write_files(directory: Path) -> dict[str, str]:
                files = self._write_weights(directory, weights)
                for staged in sorted(staging.iterdir()):
                    os.replace(staged, directory / staged.name)
                    files[staged.name.removesuffix(".pt").replace(".", "_").replace("-", "_")] = staged.name
                staging.rmdir()
                files.update(checkpoints.write_training_state(
                    directory, optimizer=optimizer_state, rng={"ranks": rng_states, "seed": self.config["seed"]},
                    scheduler=self.schedule.state_dict(state.step), stream=stream_states[-1],
                    hf_config=self.built.hf_config, base_weights=self.built.base_weights))
                if self.mixing is not None:
                    write_json_atomic(directory / MIXING_STATE, self.mixing.state_dict())
                    files["mixing"] = MIXING_STATE
                return files

            evaluation = state.evaluation if (state.evaluation or {}).get("step") == state.step else None
            checkpoints.write_checkpoint(self.config["save"], step=state.step, tokens_seen=state.tokens_seen,
                                         config=self.config, backend=strategy.name,
                                         weights="lora" if self.lora else "full", write_files=write_files,
                                         evaluation=evaluation)
            if self.config["save_total_limit"]:
                checkpoints.prune_checkpoints(self.config["save"], self.config["save_total_limit"],
                                              keep_best=self.config["keep_best"], best_metric=self.config["best_metric"])
            if self.config["save_optimizer"] == "latest":
                checkpoints.drop_optimizer_state(self.config["save"],
                                                 keep=Path(self.config["save"]) / checkpoints.step_dir_name(state.step))
        comm.barrier()

    def _write_weights(self, directory: Path, weights: dict[str, torch.Tensor]) -> dict[str, str]:
        if not self.lora:
            return checkpoints.save_full_weights(weights, directory)
        files = self.built.engine.save(self.model, directory, self.lora, state_dict=weights)
        _check_adapter(directory / files["adapter"], expected=len(weights))
        return files


def _check_adapter(path: Path, *, expected: int) -> None:
    """The delta engine wrote every trainable tensor (PEFT selects them by walking the model's modules,
    which a wrapper such as BMTrain's could hide)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        written = len(list(handle.keys()))
    if written != expected:
        raise Fm9gError(f"the adapter holds {written} of the {expected} LoRA tensors", where=str(path),
                        fix="report this: the delta engine did not recognise the wrapped model's LoRA modules")


def _online_mixing(config: dict[str, Any], stream: Any, resume: ResumePoint | None) -> OnlineMixing | None:
    """The run's online reweighting (``mixing.online``), at the resume point's state when resuming."""
    options = (config.get("mixing") or {}).get("online")
    if not options:
        return None
    if not callable(getattr(stream, "set_weights", None)):
        raise Fm9gError("online mixing changes the weights the stream draws with, and a materialized mixture's "
                        "batches are already drawn", where="train config: mixing.online",
                        fix="train on the manifest (data.manifest) to mix online")
    mixing = OnlineMixing(options, list(stream.task_names), stream.weights)
    saved = resume.file("mixing") if resume is not None else None
    if saved is not None:
        mixing.load_state_dict(checkpoints.read_json_file(saved))
    return mixing


def _check_best_metric(metric: str, held_out: Any) -> None:
    """``best_metric`` names a figure the evaluation produces: a total or an evaluated task."""
    known = ["loss", "weighted_loss", *(held.spec.task_name for held in held_out.plan.sets)]
    if metric not in known:
        raise Fm9gError(f"best_metric '{metric}' is not a held-out figure of this run", where="train config: best_metric",
                        fix=f"use one of: {', '.join(known)}")


def train(config: dict[str, Any], context: RunContext, strategy: BackendStrategy) -> dict[str, Any]:
    """Train as ``config`` says on this rank; the final step, tokens seen and latest checkpoint.
    SIGTERM and Ctrl-C end it with ``KeyboardInterrupt`` between steps (:mod:`.stop_signals`)."""
    comm, resume = strategy.collectives, context.resume
    with stop_signals.stop_at_step_boundaries():
        lock = checkpoints.SaveDirLock(config["save"]) if comm.is_main else None
        try:
            checkpoints.check_save_dir(config["save"], resume is not None, is_main=comm.is_main)
            comm.barrier()
            return _train(config, context, strategy)
        finally:
            if lock is not None:
                lock.release()


def _train(config: dict[str, Any], context: RunContext, strategy: BackendStrategy) -> dict[str, Any]:
    comm, resume = strategy.collectives, context.resume
    stream = context.open_stream(config, rank=comm.rank, world_size=comm.world_size)
    report: Any = SilentReport()
    try:
        tokenizer = stream_tokenizer(stream, config)
        stop_signals.raise_if_stop_requested()
        built = build_training_model(config, device=comm.device, vocab_size=getattr(tokenizer, "vocab_size", None),
                                     resume=resume, is_main=comm.is_main, base_dtype=strategy.base_dtype(config),
                                     prepare=strategy.prepare_model)
        stop_signals.raise_if_stop_requested()
        total_params, trainable_params = parameter_counts(built.model)
        if not trainable_params:
            raise Fm9gError("the model has no trainable parameters", where="train config: delta")
        model = strategy.setup_model(built, config)
        optimization = strategy.make_optimization(model, config)
        state = TrainState()
        if resume is not None:
            strategy.restore_optimizer(optimization, resume)
            resume.restore_rng(rank=comm.rank, world_size=comm.world_size)
            state = TrainState(step=resume.step, tokens_seen=resume.tokens_seen,
                               evaluation=resume.manifest.get("evaluation"))
        else:
            torch.manual_seed(config["seed"] + comm.rank)
        schedule = schedule_from_config(config)
        description = strategy.describe(config)
        task_names = list(stream.task_names)
        held_out = held_out_batches(config, tokenizer, manifest=getattr(stream, "manifest", None),
                                    task_names=list(stream.task_names)) if config["eval_iters"] else None
        if config["keep_best"]:
            _check_best_metric(config["best_metric"], held_out)
        if comm.is_main:
            context.output.print_header(
                config=config, total_params=total_params, trainable_params=trainable_params,
                device=description.device, world_size=comm.world_size, task_names=task_names, tokenizer=tokenizer,
                resumed_from=resume.directory if resume else None, step=state.step, precision=description.precision,
                held_out=held_out.plan.describe() if held_out else None)
            for note in description.notes:
                context.message(f"note: {note}")
            online = (config.get("mixing") or {}).get("online")
            if online:
                context.message(f"mixing: online ({online['method']}) every {online['every']} steps, step size "
                                f"{online['step_size']}, smoothing {online['smoothing']}, shares in "
                                f"[{online['min_share']}, {online['max_share']}]")
            report = RunReport(context.output, config["save"], train_iters=config["train_iters"],
                               resume_step=state.step, progress_seconds=config["progress_seconds"],
                               config=config, mixture=mixture_plan(stream))
        trainer = Trainer(model, optimization, comm, task_names, config["clip_grad"], description.autocast)
        mixing = _online_mixing(config, stream, resume)
        checkpointer = Checkpointer(config, strategy, built, model, optimization, stream, schedule, mixing)
        evaluator = Evaluator(held_out, comm, autocast_dtype=description.autocast) if held_out else None
        state = run_loop(trainer, stream, state, LoopSettings.from_config(config), schedule=schedule,
                         mixing=StreamReweighting(mixing, stream) if mixing else None,
                         save=checkpointer.save, report=report,
                         evaluate=(lambda step: evaluator(model, step)) if evaluator else None)
    finally:
        report.close()
        if hasattr(stream, "close"):
            stream.close()
    comm.barrier()
    latest = checkpoints.latest_checkpoint(config["save"])
    return {"step": state.step, "tokens_seen": state.tokens_seen, "checkpoint": str(latest) if latest else None}
