"""Experiment trackers with the real libraries: TensorBoard, MLflow (a local store) and W&B (offline)
get the same scalars at the same steps, the run config and the mixture plan, read back from what
each wrote on disk."""

from __future__ import annotations

import glob
import json
import os
import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from backend_helpers import run_fm9g, write_train_config
from fm9g.backends.training.metrics import MetricsLog
from fm9g.backends.training.trackers import mixture_plan, resolve_report_to
from fm9g.core.errors import Fm9gError, UnknownName, ValidationFailed

STEPS = [{"step": step, "loss": 3.0 / step, "lr": 1e-3 * step, "grad_norm": 0.5 + step, "scale": 1.0,
          "tokens": 256, "tokens_per_s": 100.0 * step, "task_loss": {"chat": 2.0 / step, "book": 4.0 / step}}
         for step in (1, 2, 3)]
STEPS[1]["task_loss"]["book"] = float("nan")  # a non-finite value reaches no tracker
EVALUATION = {"step": 3, "loss": 1.5, "weighted_loss": 1.4, "perplexity": 4.48, "target_tokens": 100,
              "tasks": {"chat": {"loss": 1.2, "perplexity": 3.32, "tokens": 60, "samples": 3},
                        "book": {"loss": 1.9, "perplexity": 6.69, "tokens": 40, "samples": 2}}}
CONFIG = {"lr": 1e-3, "delta": {"lora_r": 8, "lora_layer": ["q_proj", "v_proj"]}, "save": "run"}
MIXTURE = {"tasks": [{"task_name": "chat", "abs_weight": 0.6, "target_share": 0.6},
                     {"task_name": "book", "abs_weight": 0.4, "target_share": 0.4}]}


def tensorboard_curves(directory: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(directory / "tensorboard"))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_run(directory: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fm9g").experiment_id])
    return client, run


def mlflow_curves(directory: Path) -> dict[str, list[tuple[int, float]]]:
    client, run = mlflow_run(directory)
    return {tag: [(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, tag)]
            for tag in run.data.metrics}


def wandb_records(directory: Path) -> list:
    """The protobuf records of the offline run's ``run-*.wandb`` file, read with W&B's own message
    types (``wandb.proto``) from LevelDB's documented log format: 32 KiB blocks of records, each with a
    7-byte header (CRC, little-endian length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4), after the
    file's 7-byte ``:W&B`` header. (``wandb.Api`` needs the server; W&B >= 0.19 writes no summary
    JSON offline.)"""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(directory / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    position, chunks, pending = 7, [], b""
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:  # zero padding up to the next block
            position += left
            continue
        piece, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind in (1, 4):
            chunks.append(pending + piece)
            pending = b""
        else:
            pending += piece
    records = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def wandb_curves_and_config(directory: Path) -> tuple[dict[str, list[tuple[int, float]]], dict]:
    curves: dict[str, list[tuple[int, float]]] = {}
    config = {}
    for record in wandb_records(directory):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    curves.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
        elif kind == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
    return curves, config


def _approx(curves: dict[str, list[tuple[int, float]]]) -> dict:
    return {tag: [(step, pytest.approx(value, rel=1e-6)) for step, value in points] for tag, points in curves.items()}


def test_every_tracker_gets_the_scalars_tensorboard_gets_the_config_and_the_mixture(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B's own offline setting, honoured without an fm9g option
    log = MetricsLog(tmp_path, report_to=["tensorboard", "mlflow", "wandb"], config=CONFIG, mixture=MIXTURE)
    for record in STEPS:
        log.log_step(record)
    log.log_eval(EVALUATION)
    log.flush(3)
    log.close()

    tensorboard = tensorboard_curves(tmp_path)
    assert tensorboard["Loss/train/book"] == [(1, 4.0), (3, pytest.approx(4.0 / 3))]
    assert tensorboard["Loss/eval/chat"] == [(3, pytest.approx(1.2))]
    assert len(tensorboard) == 14  # train: loss, 3 optimizer tags, throughput, 2 tasks; eval: 3 totals, 2 × 2 per task
    assert mlflow_curves(tmp_path) == _approx(tensorboard)
    curves, config = wandb_curves_and_config(tmp_path)
    assert curves == _approx(tensorboard)

    assert config["train"] == CONFIG and config["mixture"] == MIXTURE
    client, run = mlflow_run(tmp_path)
    assert run.data.params["delta.lora_r"] == "8" and run.data.params["delta.lora_layer"] == '["q_proj", "v_proj"]'
    assert run.data.params["mixture.chat.share"] == "0.6" and run.info.status == "FINISHED"
    import mlflow

    artifacts = run.info.artifact_uri
    assert mlflow.artifacts.load_dict(f"{artifacts}/fm9g/train_config.json") == CONFIG
    assert mlflow.artifacts.load_dict(f"{artifacts}/fm9g/mixture.json") == MIXTURE


def test_report_to_names_and_options_are_checked_when_the_config_is_read(tmp_path, monkeypatch):
    assert resolve_report_to(None, where="t") == [{"name": "tensorboard", "options": {}}]
    assert resolve_report_to([{"name": "mlflow", "options": {"experiment": "x"}}], where="t") == [
        {"name": "mlflow", "options": {"experiment": "x"}}]
    assert resolve_report_to(["wandb"], where="t") == [{"name": "wandb", "options": {"project": "fm9g"}}]
    with pytest.raises(UnknownName, match="did you mean 'mlflow'"):
        resolve_report_to(["mlfow"], where="train.json: $.report_to")
    with pytest.raises(ValidationFailed, match="unknown option \\(did you mean 'mode'"):
        resolve_report_to([{"name": "wandb", "options": {"mod": "offline"}}], where="t")
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    with pytest.raises(Fm9gError, match=r"needs the wandb package.*pip install 'fm9g\[wandb\]'"):
        resolve_report_to(["tensorboard", "wandb"], where="t")


def test_no_tracker_but_the_jsonl_logs(tmp_path):
    log = MetricsLog(tmp_path, report_to=[])
    log.log_step(STEPS[0])
    log.close()
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "train_log.jsonl").is_file()


def test_the_mixture_plan_comes_from_the_stream(mixture):
    from fm9g.mixer.stream import MixtureStream

    stream = MixtureStream.from_manifest(mixture / "mix.json")
    try:
        plan = mixture_plan(stream)
    finally:
        stream.close()
    assert [(task["task_name"], task["target_share"]) for task in plan["tasks"]] == [
        ("chat", pytest.approx(0.6)), ("book", pytest.approx(0.4))]
    assert plan["tasks"][0]["transform"]["name"] == "chatml" and plan["seed"] == 7


@pytest.mark.slow
def test_fm9g_train_holds_the_same_curves_in_tensorboard_mlflow_and_wandb_offline(mixture, tmp_path):
    config = write_train_config(tmp_path, mixture / "mix.json", name="train.yaml")
    overrides = ["train_iters=3", "save_iters=3", 'report_to=["tensorboard","mlflow",{"name":"wandb","options":{"mode":"offline"}}]']
    env_before = os.environ.pop("WANDB_MODE", None)
    try:
        result = run_fm9g("train", "--config", str(config), *overrides)
    finally:
        if env_before is not None:
            os.environ["WANDB_MODE"] = env_before
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    tensorboard = tensorboard_curves(run)
    assert [step for step, _ in tensorboard["Loss/train"]] == [1, 2, 3] and "Loss/train/chat" in tensorboard
    assert mlflow_curves(run) == _approx(tensorboard)
    curves, recorded = wandb_curves_and_config(run)
    assert curves == _approx(tensorboard)
    assert recorded["train"]["train_iters"] == 3 and recorded["train"]["save"] == str(run)
    assert [task["task_name"] for task in recorded["mixture"]["tasks"]] == ["chat", "book"]
