"""The ``wandb`` tracker: a Weights & Biases run per ``fm9g train`` process, offline or online.

The mode is the ``mode`` option, else W&B's own setting (``$WANDB_MODE``, ``wandb offline``), which
fm9g honours as it is: offline, the run is written under ``<save>/wandb/offline-run-*`` (the ``dir``
option moves it) and ``wandb sync <that directory>`` uploads it later. The run gets every scalar
TensorBoard gets at the optimizer step, and as its config ``{"train": <train config>, "mixture":
<mixture plan>}``. A resumed run is a new W&B run whose first step follows the checkpoint's.
"""

from __future__ import annotations

from typing import Any

import fm9g
from fm9g.backends.training.trackers import TrackerRun
from fm9g.core.errors import Fm9gError


class WandbSession:
    def __init__(self, run: TrackerRun, options: dict[str, Any]):
        import wandb

        directory = options.get("dir") or str(run.save_dir)
        try:
            self.run = wandb.init(
                project=options["project"], entity=options.get("entity"), name=options.get("name") or run.name,
                mode=options.get("mode"), dir=directory, config={"train": run.config, "mixture": run.mixture},
                tags=[f"resumed_from_step={run.resume_step}"] if run.resume_step else None,
                settings=wandb.Settings(console="off", quiet=True), reinit="create_new")
        except Exception as error:  # noqa: BLE001 - no API key, no network, a bad entity: the user's to fix
            raise Fm9gError(f"cannot start the W&B run: {type(error).__name__}: {error}", where="report_to wandb",
                            fix="run `wandb login`, or record offline: WANDB_MODE=offline or options.mode offline") from None

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def flush(self, step: int) -> None:
        """Nothing to do: W&B writes its run file from its own process and offers no durability call."""

    def close(self) -> None:
        self.run.finish()


class WandbLogger:
    name = "wandb"
    description = "Weights & Biases run (offline under <save>/wandb with WANDB_MODE=offline or mode: offline)"
    requires = (("wandb", "wandb"),)
    """(module, fm9g extra that installs it)."""
    options_schema = {
        "type": "object",
        "properties": {
            "project": {"type": "string", "minLength": 1, "default": "fm9g"},
            "entity": {"type": "string", "minLength": 1},
            "name": {"type": "string", "minLength": 1, "description": "run name (default: the save directory's name)"},
            "mode": {"enum": ["online", "offline", "disabled"],
                     "description": "default: W&B's own setting ($WANDB_MODE, `wandb offline`)"},
            "dir": {"type": "string", "minLength": 1, "description": "where W&B writes its files (default: <save>)"},
        },
        "additionalProperties": False,
    }

    def open(self, run: TrackerRun, options: dict[str, Any]) -> WandbSession:
        return WandbSession(run, options)


@fm9g.hookimpl
def register_loggers(register) -> None:
    register(WandbLogger())
