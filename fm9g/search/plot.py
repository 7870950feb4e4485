"""The search's figure: out-of-fold predicted vs measured target loss, and the shares tried and proposed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fm9g.core.atomic import atomic_file
from fm9g.core.errors import Fm9gError


def plot_search(report: dict[str, Any], path: str | Path) -> Path:
    """Left: each run's out-of-fold prediction against its measured loss (and the confirmation run);
    right: each task's share in every run (dots) and in the proposal (bar). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise Fm9gError(f"cannot tell the image format of '{path}'", where="--plot", fix="use a .png, .svg or .pdf name")
    runs, tasks, fit = report["runs"], report["tasks"], report["fit"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    measured = [run["target"] for run in runs]
    predicted = [run["out_of_fold_predicted"] for run in runs]
    left.scatter(measured, predicted, label="proxy runs (out of fold)")
    confirm = report.get("confirm")
    if confirm:
        left.scatter([confirm["measured"]], [confirm["predicted"]], marker="*", s=160, color="crimson",
                     label="proposal (confirmed)")
    low, high = min(measured + predicted), max(measured + predicted)
    left.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
    left.set_xlabel(f"measured {report['target']}")
    left.set_ylabel("predicted")
    left.set_title(f"{fit['regressor']}: Spearman ρ {fit['spearman']:.3f} ({fit['folds']}-fold)")
    left.legend(fontsize="small")
    for index, task in enumerate(tasks):
        right.scatter([index] * len(runs), [run["weights"][task] for run in runs], alpha=0.4, color="grey")
    right.bar(range(len(tasks)), [report["proposal"]["weights"][task] for task in tasks], alpha=0.5,
              label="proposal")
    right.set_xticks(range(len(tasks)), tasks)
    right.set_ylabel("share")
    right.set_title("shares tried (dots) and proposed (bars)")
    right.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        figure.savefig(handle, format=path.suffix.lstrip(".").lower())
    plt.close(figure)
    return path
