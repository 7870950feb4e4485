"""The ``mlflow`` tracker: an MLflow run per ``fm9g train`` process, in a local store or at a tracking URI.

Where: the ``tracking_uri`` option, else ``$MLFLOW_TRACKING_URI``, else a local SQLite store in the
run's save directory (``sqlite:///<save>/mlflow.db``, artifacts in ``<save>/mlartifacts``; view it
with ``mlflow ui --backend-store-uri sqlite:///<save>/mlflow.db``). MLflow 3 keeps its older
``./mlruns`` file store only behind ``MLFLOW_ALLOW_FILE_STORE=true``; with that set, a ``file:`` URI
works too. The run gets every scalar TensorBoard gets (as metrics, at the optimizer step), the train
config as flat parameters (``delta.lora_r``) and whole as ``fm9g/train_config.json``, and the
mixture plan as ``fm9g/mixture.json`` plus a ``mixture.<task>.share`` parameter per task. A resumed
run is a new MLflow run tagged ``fm9g.resumed_from_step``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import fm9g
from fm9g.backends.training.trackers import TrackerRun, flat_params
from fm9g.core.errors import Fm9gError

_BATCH = 100
"""MLflow takes at most 100 parameters (and 1000 metrics) per log_batch call."""
_PARAM_LENGTH = 500
"""Parameter values longer than this are cut (the whole config is an artifact besides)."""


class MlflowSession:
    def __init__(self, run: TrackerRun, options: dict[str, Any]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        local = run.save_dir / "mlflow.db"
        uri = options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local}"
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(options["experiment"])
            experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(
                options["experiment"], artifact_location=(run.save_dir / "mlartifacts").resolve().as_uri()
                if uri == f"sqlite:///{local}" else None)
            tags = {"fm9g.save": str(run.save_dir), "fm9g.version": fm9g.__version__}
            if run.resume_step:
                tags["fm9g.resumed_from_step"] = str(run.resume_step)
            self.run_id = self.client.create_run(experiment_id, run_name=options.get("run_name") or run.name,
                                                 tags=tags).info.run_id
        except Exception as error:  # noqa: BLE001 - a store that cannot be opened is the user's to fix
            raise Fm9gError(f"cannot open the MLflow store: {type(error).__name__}: {error}",
                            where=f"report_to mlflow, tracking URI {uri}",
                            fix="check tracking_uri / MLFLOW_TRACKING_URI, or leave both unset for a local store") from None
        self.uri = uri
        params = {key: value[:_PARAM_LENGTH] for key, value in flat_params(run.config).items()}
        for task in run.mixture.get("tasks", []):
            if "target_share" in task:
                params[f"mixture.{task['task_name']}.share"] = f"{task['target_share']:.6g}"
        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + _BATCH])
        self.client.log_dict(self.run_id, run.config, "fm9g/train_config.json")
        self.client.log_dict(self.run_id, run.mixture, "fm9g/mixture.json")

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(tag, value, now, step) for tag, value in scalars.items()])

    def flush(self, step: int) -> None:
        """Nothing to do: ``log_batch`` returns once the store has the values."""

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class MlflowLogger:
    name = "mlflow"
    description = "MLflow run: a local store in <save> (sqlite), or tracking_uri / $MLFLOW_TRACKING_URI"
    requires = (("mlflow", "mlflow"),)
    """(module, fm9g extra that installs it)."""
    options_schema = {
        "type": "object",
        "properties": {
            "tracking_uri": {"type": "string", "minLength": 1,
                             "description": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<save>/mlflow.db)"},
            "experiment": {"type": "string", "minLength": 1, "default": "fm9g", "description": "experiment name"},
            "run_name": {"type": "string", "minLength": 1, "description": "run name (default: the save directory's name)"},
        },
        "additionalProperties": False,
    }

    def open(self, run: TrackerRun, options: dict[str, Any]) -> MlflowSession:
        return MlflowSession(run, options)


@fm9g.hookimpl
def register_loggers(register) -> None:
    register(MlflowLogger())
