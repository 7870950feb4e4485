"""The plan: what a manifest implies for a token budget, before running anything.

Per dataset: weight and target share, rows, tokens per epoch (estimated by tokenizing a keyed
random sample of rows through the dataset's real transform and oversize rule — the chat template
counts), expected tokens and epochs over the budget, and a warning where a weight implies more
epochs than the dataset may make, with the largest weight that would fit, and where the sampled
rows' transform failures exceed the dataset's ``max_transform_errors`` (the run would stop).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fm9g.mixer.samples import TRANSFORM_FAILED

SAMPLE_ROWS = 256


def tokens_per_epoch(stream: Any, index: int) -> dict[str, Any]:
    """Estimated kept tokens per epoch of dataset ``index``, the mean kept sample length, and the
    sampled rows whose transform failed (how many, and the first one's message)."""
    source = stream._sources[index]
    nlines = source.template.nlines
    if nlines == 0:
        return {"tokens": 0.0, "mean_sample": 0.0, "kept_fraction": 0.0, "sampled": 0, "failed": 0, "first_failure": None}
    count = min(nlines, SAMPLE_ROWS)
    task = source._task(0, 0, count)
    chunk = source.builder.build(task)
    kept = chunk.kept.astype(np.float64)
    mean_kept = float(kept.mean())
    kept_fraction = float(np.count_nonzero(kept) / len(kept))
    failed = np.flatnonzero(np.isin(chunk.status, list(TRANSFORM_FAILED)))
    return {
        "tokens": mean_kept * nlines,
        "mean_sample": float(kept[kept > 0].mean()) if kept_fraction else 0.0,
        "kept_fraction": kept_fraction,
        "sampled": count,
        "failed": len(failed),
        "first_failure": f"row {int(chunk.rows[failed[0]])}: {chunk.errors[int(failed[0])]}" if len(failed) else None,
    }


def allowed_epochs(spec: Any) -> float:
    if not spec.allow_repeat:
        return 1.0
    return float(spec.max_epochs) if spec.max_epochs else float("inf")


def make_plan(stream: Any, *, budget_tokens: float | None, budget_note: str,
              budget_samples: int | None = None) -> dict[str, Any]:
    """The plan as a JSON-ready dict. The budget is ``budget_tokens``, else ``budget_samples``
    samples (turned into tokens with each dataset's mean sample length at its share), else one pass
    over every dataset."""
    specs = stream.manifest.datasets
    weights = np.array([spec.abs_weight for spec in specs], dtype=float)
    shares = weights / weights.sum()
    estimates = [tokens_per_epoch(stream, index) for index in range(len(specs))]
    if budget_tokens is None and budget_samples:
        samples_per_token = sum(share / estimate["mean_sample"] for share, estimate in zip(shares, estimates)
                                if estimate["mean_sample"])
        budget_tokens = budget_samples / samples_per_token if samples_per_token else 0.0
        budget_note = (f"--samples {budget_samples:,} × ≈{1 / samples_per_token:,.0f} tokens a sample"
                       if samples_per_token else f"--samples {budget_samples:,}")
    if budget_tokens is None:
        budget_tokens = float(sum(estimate["tokens"] for estimate in estimates))
        budget_note = "one pass over all datasets"
    datasets, warnings = [], []
    for spec, share, estimate, progress in zip(specs, shares, estimates, stream.progress):
        expected = share * budget_tokens
        epochs = expected / estimate["tokens"] if estimate["tokens"] else float("inf")
        limit = allowed_epochs(spec)
        entry = {
            "task_name": spec.task_name, "abs_weight": spec.abs_weight, "target_share": float(share),
            "rows": progress.nlines, "tokens_per_epoch": round(estimate["tokens"]),
            "mean_sample_tokens": round(estimate["mean_sample"], 1), "kept_fraction": round(estimate["kept_fraction"], 4),
            "expected_tokens": round(expected), "expected_epochs": round(epochs, 4) if np.isfinite(epochs) else None,
            "allowed_epochs": None if limit == float("inf") else limit,
            "max_transform_errors": spec.max_transform_errors, "sampled_transform_failures": estimate["failed"],
        }
        if estimate["failed"] > spec.max_transform_errors:
            warnings.append(
                f"{spec.where} ({spec.task_name}): the transform failed on {estimate['failed']} of the "
                f"{estimate['sampled']} rows sampled for the plan ({estimate['first_failure']}); the run stops at "
                f"the first failure beyond max_transform_errors={spec.max_transform_errors}")
        if share > 0 and epochs > limit:
            fit_share = limit * estimate["tokens"] / budget_tokens
            others = float(weights.sum() - spec.abs_weight)
            fit_weight = fit_share * others / (1 - fit_share) if fit_share < 1 else None
            entry["largest_fitting_weight"] = fit_weight
            weight_text = f"abs_weight <= {fit_weight:.4g}" if fit_weight is not None else "any weight"
            warnings.append(
                f"{spec.where} ({spec.task_name}): the weight implies {epochs:.2f} epochs but the dataset may make "
                f"{limit:g} (allow_repeat={str(spec.allow_repeat).lower()}, max_epochs={spec.max_epochs}); it will "
                f"leave the mix early and the others renormalize; {weight_text} would fit "
                f"(keeping the other weights)"
            )
        datasets.append(entry)
    return {"budget_tokens": round(budget_tokens), "budget": budget_note, "datasets": datasets, "warnings": warnings}


def print_plan(plan: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"plan: {plan['budget_tokens']:,} tokens ({plan['budget']})", box=None, title_justify="left")
    for column in ("task", "weight", "share", "rows", "tokens/epoch", "sample", "expected tokens", "epochs", "allowed"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for entry in plan["datasets"]:
        epochs = entry["expected_epochs"]
        allowed = entry["allowed_epochs"]
        table.add_row(
            entry["task_name"], f"{entry['abs_weight']:g}", f"{100 * entry['target_share']:.2f}%",
            f"{entry['rows']:,}", f"{entry['tokens_per_epoch']:,}", f"{entry['mean_sample_tokens']:.0f}",
            f"{entry['expected_tokens']:,}", "-" if epochs is None else f"{epochs:.3f}",
            "∞" if allowed is None else f"{allowed:g}",
        )
    console.print(table)
    for warning in plan["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
