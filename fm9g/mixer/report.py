"""The realized mixture: what a run of the stream actually produced, per dataset.

:class:`MixRecorder` watches packed batches (token shares, prompt vs trained tokens, samples,
packing efficiency, a share history for the plot); :func:`realized_report` combines that with the
stream's per-dataset progress (epochs, drop counts, when a dataset left) into ``mix_report.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fm9g.mixer.packing import PackedBatch
from fm9g.mixer.samples import IGNORE_INDEX

HISTORY_POINTS = 400


class MixRecorder:
    """Per-task counters over the batches of a run, plus a bounded history of cumulative tokens."""

    def __init__(self, task_names: list[str], bos_id: int):
        self.task_names = task_names
        self.bos_id = bos_id
        size = len(task_names)
        self.tokens = np.zeros(size, dtype=np.int64)
        self.trained = np.zeros(size, dtype=np.int64)
        self.samples = np.zeros(size, dtype=np.int64)
        self.pieces = np.zeros(size, dtype=np.int64)
        self.batches = 0
        self.capacity = 0
        self.history: list[tuple[int, list[int]]] = []
        self._stride = 1

    def add(self, batch: PackedBatch) -> None:
        size = len(self.task_names)
        real = batch.task_ids >= 0
        tasks = batch.task_ids[real]
        self.tokens += np.bincount(tasks, minlength=size)
        self.trained += np.bincount(tasks[batch.targets[real] != IGNORE_INDEX], minlength=size)
        starts = batch.cu_seqlens[:-1]
        starts = starts[batch.task_ids[starts] >= 0]
        piece_tasks = batch.task_ids[starts]
        self.pieces += np.bincount(piece_tasks, minlength=size)
        self.samples += np.bincount(piece_tasks[batch.input_ids[starts] == self.bos_id], minlength=size)
        self.batches += 1
        self.capacity += len(batch.input_ids)
        if self.batches % self._stride == 0:
            self.history.append((int(self.tokens.sum()), self.tokens.tolist()))
            if len(self.history) >= 2 * HISTORY_POINTS:
                self.history = self.history[1::2]
                self._stride *= 2

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())

    @property
    def total_samples(self) -> int:
        return int(self.samples.sum())


def transform_provenance(transform: Any) -> dict[str, Any]:
    """What a dataset's transform was: the plugin, its version and distribution, and its options as
    they took effect (defaults filled in), or the script's path."""
    from fm9g.core.plugins import registry, validate_options

    if transform.script:
        return {"script": str(transform.script)}
    info = registry().info("transform", transform.name)
    return {"name": info.name, "version": info.version, "distribution": info.distribution,
            "options": validate_options(info.obj, transform.options, where=f"transform {info.name}")}


def realized_report(recorder: MixRecorder, stream: Any, *, seconds: float, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The realized mixture as a JSON-ready dict (the content of ``mix_report.json``)."""
    specs = stream.manifest.datasets
    weights = np.array([spec.abs_weight for spec in specs], dtype=float)
    targets = weights / weights.sum() if weights.sum() > 0 else weights
    total = max(recorder.total_tokens, 1)
    datasets = []
    for index, (spec, progress) in enumerate(zip(specs, stream.progress)):
        share = recorder.tokens[index] / total
        datasets.append({
            "task_name": spec.task_name,
            "transform": transform_provenance(spec.transform),
            "abs_weight": spec.abs_weight,
            "target_share": float(targets[index]),
            "realized_share": float(share),
            "share_error_pp": float(100 * (share - targets[index])),
            "tokens": int(recorder.tokens[index]),
            "trained_tokens": int(recorder.trained[index]),
            "prompt_tokens": int(recorder.tokens[index] - recorder.trained[index]),
            "samples": int(recorder.samples[index]),
            "pieces": int(recorder.pieces[index]),
            "rows": progress.nlines,
            "epochs": round(progress.epochs_done, 4),
            "dropped": {k: v for k, v in progress.counts.items() if k not in ("segmented", "truncated")},
            "truncated": progress.counts.get("truncated", 0),
            "segmented": progress.counts.get("segmented", 0),
            "active": progress.active,
            "left_at_batch": progress.left_at_batch,
            "left_reason": progress.left_reason,
        })
    return {
        "manifest": stream.manifest.source,
        "settings": {"seed": stream.manifest.seed, "max_length": stream.max_length,
                     "batch_size": stream.batch_size, "tokenizer": stream.tokenizer.spec},
        "batches": recorder.batches,
        "tokens": recorder.total_tokens,
        "samples": recorder.total_samples,
        "packing_efficiency": recorder.total_tokens / recorder.capacity if recorder.capacity else 0.0,
        "seconds": round(seconds, 3),
        "tokens_per_second": recorder.total_tokens / seconds if seconds > 0 else None,
        "max_share_error_pp": max((abs(d["share_error_pp"]) for d in datasets if d["target_share"] > 0), default=0.0),
        "datasets": datasets,
        "plan": plan,
        "stream_state": stream.state_dict(),
    }


def print_report(report: dict[str, Any], console: Any) -> None:
    """The realized mixture as a table (rich console)."""
    from rich.table import Table

    table = Table(title="realized mixture", box=None, title_justify="left")
    for column in ("task", "tokens", "share", "target", "error (pp)", "trained", "samples", "epochs",
                   "dropped", "truncated", "segmented", "left"):
        table.add_column(column, justify="left" if column in ("task", "dropped", "left") else "right")
    for entry in report["datasets"]:
        dropped = ", ".join(f"{reason} {count}" for reason, count in entry["dropped"].items()) or "-"
        left = f"batch {entry['left_at_batch']} ({entry['left_reason']})" if entry["left_reason"] else "-"
        table.add_row(
            entry["task_name"], f"{entry['tokens']:,}", f"{100 * entry['realized_share']:.2f}%",
            f"{100 * entry['target_share']:.2f}%", f"{entry['share_error_pp']:+.3f}", f"{entry['trained_tokens']:,}",
            f"{entry['samples']:,}", f"{entry['epochs']:.3f}", dropped, str(entry["truncated"]),
            str(entry["segmented"]), left,
        )
    console.print(table)
    rate = report["tokens_per_second"]
    console.print(
        f"{report['batches']:,} batches, {report['tokens']:,} tokens, {report['samples']:,} samples; "
        f"packing efficiency {100 * report['packing_efficiency']:.2f}%; max share error "
        f"{report['max_share_error_pp']:.3f} pp; {report['seconds']:.1f} s"
        + (f" ({rate:,.0f} tokens/s)" if rate else "")
    )
