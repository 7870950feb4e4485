"""``fm9g mix --plot FILE.png``: realized token share of each dataset over the run, against its target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fm9g.core.atomic import atomic_file
from fm9g.core.errors import Fm9gError


def plot_shares(history: list[tuple[int, list[int]]], report: dict[str, Any], path: str | Path) -> Path:
    """Draw realized shares (solid) and targets (dashed) against tokens seen; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise Fm9gError(f"cannot tell the image format of '{path}'", where="--plot", fix="use a .png, .svg or .pdf name")
    if not history:
        raise Fm9gError("nothing to plot: the run produced no batches", where="--plot")
    totals = np.array([total for total, _ in history], dtype=float)
    tokens = np.array([per_task for _, per_task in history], dtype=float)
    shares = tokens / np.maximum(totals[:, None], 1)
    figure, axis = plt.subplots(figsize=(9, 5), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, entry in enumerate(report["datasets"]):
        colour = colours[index % len(colours)]
        axis.plot(totals, 100 * shares[:, index], color=colour, label=f"{entry['task_name']} (realized)")
        axis.axhline(100 * entry["target_share"], color=colour, linestyle="--", linewidth=1,
                     label=f"{entry['task_name']} target {100 * entry['target_share']:.1f}%")
    axis.set_xlabel("non-padding tokens in the stream")
    axis.set_ylabel("share of tokens (%)")
    axis.set_title(f"realized vs target token share — max error {report['max_share_error_pp']:.3f} pp at the end")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        figure.savefig(handle, format=path.suffix[1:].lower())
    plt.close(figure)
    return path
