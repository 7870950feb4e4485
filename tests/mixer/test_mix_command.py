"""``fm9g mix`` end to end on the bundled examples (real prepare/index, real subprocesses)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from fm9g.cli import main as fm9g_main
from fm9g.mixer.materialized import MaterializedStream, MaterializedWriter
from fm9g.mixer.stream import MixtureStream

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory) -> Path:
    """A copy of examples/ (manifests, seed scripts) with work/idx built by fm9g prepare + fm9g index."""
    root = tmp_path_factory.mktemp("examples")
    for name in ("mix.json", "mix_seed.json"):
        shutil.copy(EXAMPLES / name, root / name)
    shutil.copytree(EXAMPLES / "seed_scripts", root / "seed_scripts")
    raw = EXAMPLES / "raw"
    prepare = [("txt", "pretrain.txt", "pretrain", []), ("alpaca", "alpaca_zh.json", "alpaca", ["--split", "test=0.05"]),
               ("medical-o1", "medical_o1.json", "medical", ["--split", "test=0.05", "--option", "language=zh"])]
    for adapter, source, name, extra in prepare:
        assert fm9g_main(["prepare", "--adapter", adapter, "--input", str(raw / source),
                          "--output", str(root / "work/prepared" / name), "--seed", "3014", *extra]) == 0
        assert fm9g_main(["index", "--input", str(root / "work/prepared" / name / "train.jsonl"),
                          "--output", str(root / "work/idx" / name), "--tokenizer", "byte", "--workers", "1"]) == 0
    return root


def fm9g(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fm9g", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "160"}, timeout=300)


def test_object_manifest_plan_run_report_preview_plot_and_output(examples_dir):
    result = fm9g("mix", "--manifest", "mix.json", "--samples", "600", "--preview", "2", "--plot", "share.png",
                  "--output", "mixed", cwd=examples_dir)
    assert result.returncode == 0, result.stderr
    assert "plan:" in result.stdout and "realized mixture" in result.stdout
    assert "[prompt] <|im_start|>system" in result.stdout or "[prompt] " in result.stdout
    assert "[trained] " in result.stdout
    report = json.loads((examples_dir / "mixed" / "mix_report.json").read_text())
    assert report["samples"] == 600 and {d["task_name"] for d in report["datasets"]} == {"pretrain", "alpaca", "medical"}
    assert report["max_share_error_pp"] < 0.5 and 0.5 < report["packing_efficiency"] <= 1
    assert (examples_dir / "share.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    materialized = list(MaterializedStream(examples_dir / "mixed"))
    live = MixtureStream.from_manifest(examples_dir / "mix.json", max_samples=600)
    assert len(materialized) == report["batches"] == len(list(MixtureStream.from_manifest(
        examples_dir / "mix.json", max_samples=600)))
    for stored, batch in zip(materialized, live):
        for field in ("input_ids", "targets", "position_ids", "task_ids", "cu_seqlens"):
            np.testing.assert_array_equal(getattr(stored, field), getattr(batch, field), err_msg=field)
        assert stored.num_tokens == batch.num_tokens
    again = fm9g("mix", "--manifest", "mix.json", "--samples", "10", "--output", "mixed", cwd=examples_dir)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr


def test_seed_manifest_needs_trust_scripts(examples_dir):
    refused = fm9g("mix", "--manifest", "mix_seed.json", "--samples", "50", cwd=examples_dir)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "--trust-scripts" in refused.stderr and "docs/plugins.md" in refused.stderr
    accepted = fm9g("mix", "--manifest", "mix_seed.json", "--trust-scripts", "--train-iters", "20",
                    "--max-length", "2048", "--report", "seed_report.json", cwd=examples_dir)
    assert accepted.returncode == 0, accepted.stderr
    report = json.loads((examples_dir / "seed_report.json").read_text())
    assert report["batches"] == 20 and report["settings"]["max_length"] == 2048


def test_bad_manifest_lists_every_problem(examples_dir):
    (examples_dir / "bad.json").write_text(json.dumps([
        {"task_name": "a", "abs_weight": -1, "path": "work/idx/alpaca"},
        {"task_name": "a", "abs_weight": 1, "path": "nowhere", "transforms": "chatlm"}]))
    result = fm9g("mix", "--manifest", "bad.json", cwd=examples_dir)
    assert result.returncode == 2
    assert "bad.json:1: $[0].abs_weight: -1 is less than the minimum of 0" in result.stderr
    assert "bad.json:1: $[1].task_name: duplicate task name 'a'" in result.stderr
    assert "$[1].path: directory does not exist" in result.stderr
    assert "did you mean 'chatml'?" in result.stderr


def test_coloured_preview_differs_between_prompt_and_trained(examples_dir):
    from rich.console import Console

    from fm9g.mixer.preview import preview_samples, print_preview

    stream = MixtureStream.from_manifest(examples_dir / "mix.json")
    samples = preview_samples(stream, stream.task_names, stream.tokenizer, 3)
    assert any(sample.prompt_tokens and sample.trained_tokens for sample in samples)
    buffer = io.StringIO()
    print_preview(samples, Console(file=buffer, force_terminal=True, color_system="truecolor", width=200))
    text = buffer.getvalue()
    assert "\x1b[2;36m" in text and "\x1b[32m" in text and "[prompt]" not in text


def test_plan_warns_when_a_weight_needs_more_epochs_than_allowed(examples_dir):
    from fm9g.mixer.manifest import load_manifest
    from fm9g.mixer.plan import make_plan

    manifest = load_manifest(examples_dir / "mix.json")
    stream = MixtureStream.from_manifest(manifest)
    plan = make_plan(stream, budget_tokens=5_000_000, budget_note="test")
    medical = next(entry for entry in plan["datasets"] if entry["task_name"] == "medical")
    assert medical["expected_epochs"] > 8 and medical["largest_fitting_weight"] < 0.3
    assert any("(medical)" in warning and "abs_weight <=" in warning for warning in plan["warnings"])


def test_materialized_ranks_and_resume_cover_every_batch_once(examples_dir, tmp_path):
    stream = MixtureStream.from_manifest(examples_dir / "mix.json")
    writer = MaterializedWriter(tmp_path / "m", capacity=stream.capacity)
    writer.shard_batches = 4
    batches = list(islice(stream, 11))
    for batch in batches:
        writer.add(batch)
    writer.finish(settings={"task_names": stream.task_names, "tokenizer": "byte", "max_length": stream.max_length,
                            "batch_size": stream.batch_size}, final_state=stream.state_dict(), report={})
    seen = []
    states = []
    for rank in range(2):
        reader = MaterializedStream(tmp_path / "m", rank=rank, world_size=2)
        seen += [batch.index for batch in islice(reader, 2)]
        states.append(reader.state_dict())
    assert states[0] == states[1] and sorted(seen) == [0, 1, 2, 3]
    rest = list(MaterializedStream(tmp_path / "m", state=states[0], rank=0, world_size=3))
    rest += list(MaterializedStream(tmp_path / "m", state=states[0], rank=1, world_size=3))
    rest += list(MaterializedStream(tmp_path / "m", state=states[0], rank=2, world_size=3))
    assert sorted(batch.index for batch in rest) == list(range(4, 11))
    for batch in rest:
        np.testing.assert_array_equal(batch.input_ids, batches[batch.index].input_ids)
        np.testing.assert_array_equal(batch.position_ids, batches[batch.index].position_ids)
    aborted = MaterializedWriter(tmp_path / "never", capacity=stream.capacity)
    aborted.add(batches[0])
    aborted.abort()
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))


def test_mix_describes_the_run_a_train_config_makes(examples_dir):
    """The plan follows --samples; --train-config gives its packing (not the seed list form's 4096)
    and budget; an existing report is not replaced silently; the report names each transform's
    plugin, version and effective options."""
    small = fm9g("mix", "--manifest", "mix.json", "--samples", "200", "--plan-only", cwd=examples_dir)
    large = fm9g("mix", "--manifest", "mix.json", "--samples", "400", "--plan-only", cwd=examples_dir)
    budget = [int(r.stdout.split("plan: ")[1].split(" tokens")[0].replace(",", "")) for r in (small, large)]
    assert small.returncode == 0 and 1.9 < budget[1] / budget[0] < 2.1

    (examples_dir / "train.json").write_text(json.dumps({
        "data": {"manifest": "mix_seed.json"}, "model": {"preset": "tiny-llama"}, "save": "run", "train_iters": 5,
        "grad_accum": 2, "max_length": 1024, "batch_size": 1, "trust_scripts": True}))
    planned = fm9g("mix", "--train-config", "train.json", "--plan-only", cwd=examples_dir)
    assert planned.returncode == 0, planned.stderr
    header = " ".join(planned.stdout.split())  # the console may wrap the long header
    assert "packing max_length 1024 (from train.json), batch_size 1 (from train.json)" in header
    assert "--train-iters 10 × 1,024 tokens" in header  # train_iters × grad_accum global batches

    first = fm9g("mix", "--manifest", "mix.json", "--samples", "20", "--report", "r.json", cwd=examples_dir)
    assert first.returncode == 0, first.stderr
    again = fm9g("mix", "--manifest", "mix.json", "--samples", "20", "--report", "r.json", cwd=examples_dir)
    assert again.returncode == 2 and "the report exists" in again.stderr and "--force" in again.stderr
    transforms = {d["task_name"]: d["transform"] for d in json.loads((examples_dir / "r.json").read_text())["datasets"]}
    chatml = next(t for t in transforms.values() if t.get("name") == "chatml")
    assert chatml["version"] and chatml["distribution"] == "fm9g" and "system" in chatml["options"]


def test_output_force_replaces_only_a_mixture_fm9g_wrote(examples_dir, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    refused = fm9g("mix", "--manifest", str(examples_dir / "mix.json"), "--samples", "20", "--output", str(notes),
                   "--force", cwd=examples_dir)
    assert refused.returncode == 2 and "only directories fm9g wrote" in refused.stderr
    assert (notes / "todo.txt").read_text() == "mine"
    here = fm9g("mix", "--manifest", "mix.json", "--samples", "20", "--output", ".", "--force", cwd=examples_dir)
    assert here.returncode == 2 and "holds the current or home directory" in here.stderr
    assert (examples_dir / "mix.json").is_file()
