"""``benchmarks/train_bench.py --quick`` still runs on a CPU (its GPU figures are in BENCHMARKS.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_bench.py"


def test_train_bench_quick_times_hf_sides_first_then_fm9g_levers_with_accumulation(tiny_corpus, tmp_path):
    work = tmp_path / "work"  # holding the corpus, so the script does not generate it again
    shutil.copytree(tiny_corpus, work / "corpus-tiny")
    output = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "full:torch+chunk,full:hf-packed,full:hf", "--steps", "2",
                             "--grad-accum", "2", "--work", str(work), "--output", str(output)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    rows = report["rows"]
    assert [row["side"] for row in rows] == ["hf", "hf-packed", "torch+chunk"]  # baselines before any kernel patching
    assert all(row["useful_tokens_per_s"] > 0 and 0 < row["useful_share"] <= 1 and row["mfu"] > 0 for row in rows)
    strongest = max(rows[:2], key=lambda row: row["useful_tokens_per_s"])["side"]  # ratios are to the fastest HF side
    assert report["ratios"][f"full:torch+chunk/{strongest}"] > 0
    assert f"full:torch+chunk/{strongest}: useful tokens/s ratio" in result.stdout
