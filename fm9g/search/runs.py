"""One proxy run of a search: its directory, its ``fm9g train`` process and its completion record.

``<search>/runs/run-NNN/`` holds ``mix.json`` (the manifest with this run's weights, paths made
absolute), ``train.json`` (the proxy train config pointed at it, saving into ``train/``),
``train.log`` and, once the run trained and evaluated, ``result.json`` — written atomically, last:
a directory without it is an unfinished run and is trained again from scratch; one with it is
never trained again. Each training is a real ``fm9g train`` subprocess that dies with the search
(Linux parent-death signal), so a killed search leaves no orphan writing into a run directory.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fm9g.backends.training.metrics import EVAL_LOG_NAME
from fm9g.core.atomic import write_json_atomic
from fm9g.core.documents import read_document
from fm9g.core.errors import Fm9gError
from fm9g.mixer.manifest import Manifest
from fm9g.mixer.transforms import looks_like_script

RESULT_NAME = "result.json"
LOG_TAIL_LINES = 15


def manifest_document(manifest: Manifest, shares: dict[str, float], *, digits: int = 6,
                      max_rows: dict[str, int] | None = None) -> Any:
    """The manifest's own document (either form) with ``abs_weight`` = ``shares``, every path
    absolute (so it can be written anywhere) and, for a data-scaled proxy, each dataset's ``max_rows``."""
    document = copy.deepcopy(read_document(manifest.source).data)
    entries = document if isinstance(document, list) else document["datasets"]
    base = Path(manifest.source).resolve().parent
    for entry, spec in zip(entries, manifest.datasets):
        entry["abs_weight"] = round(float(shares[spec.task_name]), digits)
        entry["path"] = str(spec.path)
        if max_rows:
            entry["max_rows"] = max_rows[spec.task_name]
        if spec.eval_path is not None:
            entry["eval_path"] = str(spec.eval_path)
        for key in ("transform", "transforms"):
            value = entry.get(key)
            if isinstance(value, str) and looks_like_script(value):
                entry[key] = str((base / value).resolve())
            elif isinstance(value, dict) and isinstance(value.get("name"), str) and looks_like_script(value["name"]):
                value["name"] = str((base / value["name"]).resolve())
    if isinstance(document, dict):
        document["tokenizer"] = manifest.tokenizer
    return document


def proxy_document(proxy: dict[str, Any], manifest_path: Path, save: Path) -> dict[str, Any]:
    """The proxy train config (paths already absolute) over ``manifest_path``, saving into ``save``,
    evaluating after its last step at least."""
    document = copy.deepcopy(proxy)
    document["data"] = {"manifest": str(manifest_path)}
    document["save"] = str(save)
    if not document.get("eval_iters"):
        document["eval_iters"] = document["train_iters"]
    return document


def completed(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's record, or ``None``."""
    path = run_dir / RESULT_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the search process dies (Linux ``PR_SET_PDEATHSIG``)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _final_evaluation(save: Path, train_iters: int, where: str) -> dict[str, Any]:
    path = save / EVAL_LOG_NAME
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []
    final = [record for record in records if record.get("step") == train_iters]
    if not final:
        raise Fm9gError(f"the run logged no held-out evaluation at its last step {train_iters}", where=where,
                        fix="give the tasks held-out sets (eval_path, or fm9g prepare --split)")
    return final[-1]


class ProxyRun:
    """One run's training process: :meth:`start` launches it, :meth:`finish` (after it exits) checks
    it, scores its final evaluation and writes the completion record."""

    def __init__(self, run_dir: Path, *, name: str, shares: dict[str, float], max_rows: dict[str, int] | None = None):
        self.run_dir, self.name, self.shares, self.max_rows = run_dir, name, shares, max_rows
        self.process: subprocess.Popen | None = None
        self._log: Any = None
        self._started = 0.0

    def start(self, *, manifest: Manifest, proxy: dict[str, Any], threads: int | None) -> None:
        """Clear an unfinished directory, write the run's manifest and config, launch ``fm9g train``."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        mix_path = write_json_atomic(self.run_dir / "mix.json", manifest_document(manifest, self.shares,
                                                                                  max_rows=self.max_rows))
        config_path = write_json_atomic(self.run_dir / "train.json",
                                        proxy_document(proxy, mix_path, self.run_dir / "train"))
        env = dict(os.environ)
        if threads and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(threads)
        self._log = open(self.run_dir / "train.log", "w", encoding="utf-8")
        self._started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "fm9g", "train", "--config", str(config_path)],
                                        stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, preexec_fn=_die_with_parent)

    def finish(self, *, train_iters: int, score: Callable[[dict[str, Any], str], float]) -> dict[str, Any]:
        """Wait for the process; raise :class:`Fm9gError` if it failed, else record and return the result."""
        assert self.process is not None
        returncode = self.process.wait()
        self._log.close()
        if returncode != 0:
            lines = (self.run_dir / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()
            last = next((line for line in reversed(lines[-LOG_TAIL_LINES:]) if line.strip()), "")
            raise Fm9gError(f"proxy run {self.name} failed (exit {returncode}): {last}",
                            where=str(self.run_dir / "train.log"),
                            fix="read the log; fix the proxy config or manifest and rerun (finished runs are kept)")
        log = self.run_dir / "train" / EVAL_LOG_NAME
        evaluation = _final_evaluation(self.run_dir / "train", train_iters, str(log))
        record = {"run": self.name, "shares": self.shares, "target": score(evaluation, str(log)),
                  "evaluation": evaluation, "seconds": time.perf_counter() - self._started}
        write_json_atomic(self.run_dir / RESULT_NAME, record)
        return record

    def stop(self) -> None:
        """End a still-running process (the search is failing or interrupted)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()
