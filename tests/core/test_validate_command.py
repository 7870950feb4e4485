"""``fm9g validate`` and ``fm9g schema`` (run through the CLI entry point, in process)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fm9g.cli import main
from fm9g.core.schemas import load_schema


def write(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def run_cli(capsys, *args: str, lines: bool = False) -> tuple[int, str, str]:
    """Exit code, stdout, stderr; problems' ``FILE:LINE:`` prefixes shortened to ``FILE:`` unless ``lines``."""
    code = main(list(args))
    captured = capsys.readouterr()
    out = captured.out if lines else re.sub(r"(?m)^(\S+?):\d+: ", r"\1: ", captured.out)
    return code, out, captured.err


def test_problems_name_the_line_in_json_and_yaml_files(tmp_path: Path, capsys) -> None:
    json_path = tmp_path / "train.json"
    json_path.write_text('{\n  "data": {"manifest": "mix.json"},\n  "model": {"preset": "tiny-llama"},\n'
                         '  "save": "run",\n  "train_iters": 4,\n  "lr": "fast"\n}\n', encoding="utf-8")
    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text("data: {manifest: mix.json}\nmodel: {preset: tiny-llama}\nsave: run\ntrain_iters: 4\n"
                         "lr: fast\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "validate", str(json_path), str(yaml_path), lines=True)
    assert code == 2
    assert out.splitlines() == [f"{json_path}:6: $.lr: 'fast' is not of type 'number'",
                                f"{yaml_path}:5: $.lr: 'fast' is not of type 'number'"]


@pytest.mark.parametrize("schema", ["meta", "train", "checkpoint"])
def test_valid_documents_are_detected(tmp_path: Path, capsys, example, schema: str) -> None:
    path = write(tmp_path / f"{schema}.json", example(schema))
    code, out, err = run_cli(capsys, "validate", str(path))
    assert (code, out, err) == (0, f"{path}: valid ({schema})\n", "")


def test_train_config_backend_and_its_options_are_checked_like_train_does(tmp_path: Path, capsys, example) -> None:
    config = dict(example("train"), backend="bmtrain", backend_options={"checkpoint_block": 3})
    path = write(tmp_path / "train.json", config)
    code, out, _ = run_cli(capsys, "validate", str(path))
    assert code == 2
    assert out.splitlines() == [f"{path}: $.backend_options (bmtrain): options.checkpoint_block: unknown option "
                                f"(did you mean 'checkpoint_blocks'? known: loss_scale, loss_scale_factor, "
                                f"loss_scale_steps, checkpoint_blocks)"]
    path = write(tmp_path / "typo.json", dict(example("train"), backend="bmtrian"))
    code, out, _ = run_cli(capsys, "validate", str(path))
    assert code == 2 and "did you mean 'bmtrain'?" in out and out.startswith(f"{path}: $.backend: unknown backend")
    path = write(tmp_path / "ok.json", dict(example("train"), backend="bmtrain", backend_options={"checkpoint_blocks": 3}))
    assert run_cli(capsys, "validate", str(path))[0] == 0


def test_seed_manifest_reports_schema_and_path_problems_together(tmp_path: Path, capsys, example) -> None:
    manifest = example("mix")
    (tmp_path / "idx" / "present").mkdir(parents=True)
    manifest[0]["path"] = "idx/present"
    manifest[1]["path"] = "idx/missing"
    manifest[1]["abs_weight"] = -0.5
    for entry in manifest:
        entry["transforms"] = "identity"
    path = write(tmp_path / "mix.json", manifest)
    code, out, err = run_cli(capsys, "validate", str(path))
    lines = out.splitlines()
    assert code == 2 and err == ""
    assert f"{path}: $[1].abs_weight: -0.5 is less than the minimum of 0" in lines
    missing = [line for line in lines if line.startswith(f"{path}: $[1].path: ") and "idx/missing" in line]
    assert missing, out
    assert not any("$[0].path" in line and "idx/present" in line and "exist" in line for line in lines)


def test_object_manifest_problems_have_json_paths(tmp_path: Path, capsys, example) -> None:
    manifest = example("mix", 1)
    manifest["datasets"][0]["transform"] = {"name": 3}
    manifest["datasets"][1]["path"] = "idx/nowhere"
    path = write(tmp_path / "mix.json", manifest)
    code, out, _ = run_cli(capsys, "validate", str(path))
    assert code == 2
    assert f"{path}: $.datasets[0].transform.name: 3 is not of type 'string'" in out.splitlines()
    assert any(line.startswith(f"{path}: $.datasets[1].path: ") for line in out.splitlines()), out


def test_train_config_problems(tmp_path: Path, capsys, example) -> None:
    config = example("train")
    config["data"] = {}
    config["lr"] = 0
    path = write(tmp_path / "train.json", config)
    code, out, _ = run_cli(capsys, "validate", str(path))
    assert code == 2
    assert out.splitlines() == [
        f"{path}: $.data: needs exactly one of 'manifest' or 'mixture'",
        f"{path}: $.lr: 0 is less than or equal to the minimum of 0",
    ]


def test_explicit_schema_and_several_files(tmp_path: Path, capsys, example) -> None:
    meta = write(tmp_path / "a.json", example("meta"))
    train = write(tmp_path / "b.json", example("train"))
    code, out, _ = run_cli(capsys, "validate", "--schema", "meta", str(meta), str(train))
    assert code == 2
    assert out.splitlines()[0] == f"{meta}: valid (meta)"
    assert f"{train}: $: 'nlines' is a required property" in out.splitlines()


def test_unreadable_and_undetectable_files(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"nlines": 3,\n}', encoding="utf-8")
    odd = write(tmp_path / "odd.json", {"hello": 1})
    code, out, _ = run_cli(capsys, "validate", str(broken), str(odd), str(tmp_path / "gone.json"), lines=True)
    lines = out.splitlines()
    assert code == 2 and len(lines) == 3
    assert lines[0].startswith(f"{broken}:2:1: invalid JSON")
    assert lines[1].startswith(f"{odd}: cannot tell which schema") and "--schema" in lines[1]
    assert lines[2].startswith(f"{tmp_path / 'gone.json'}: file not found")


def test_schema_command_prints_the_schema(capsys) -> None:
    code, out, _ = run_cli(capsys, "schema", "train")
    assert code == 0 and json.loads(out) == load_schema("train")
    code, out, _ = run_cli(capsys, "schema")
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["mix", "meta", "train", "checkpoint"]


def test_schema_command_unknown_name_is_one_line_with_suggestion() -> None:
    result = subprocess.run([sys.executable, "-m", "fm9g", "schema", "chekpoint"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "unknown schema 'chekpoint'" in result.stderr and "did you mean 'checkpoint'?" in result.stderr


def test_manifest_over_real_indexed_datasets_is_valid(tmp_path: Path, capsys) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"input": f"q{i}", "output": f"answer {i}"}) + "\n" for i in range(20)))
    from fm9g.index.builder import BuildOptions, build_index

    for name in ("alpha", "beta"):
        build_index([records], tmp_path / "idx" / name, BuildOptions(tokenizer="byte", workers=1, progress=False))
    manifest = write(tmp_path / "mix.json", {"tokenizer": "byte", "datasets": [
        {"task_name": "alpha", "path": "idx/alpha", "abs_weight": 0.7, "transform": "identity"},
        {"task_name": "beta", "path": "idx/beta", "abs_weight": 0.3},
    ]})
    meta = tmp_path / "idx" / "alpha" / "meta.json"
    code, out, _ = run_cli(capsys, "validate", str(manifest), str(meta))
    assert (code, out.splitlines()) == (0, [f"{manifest}: valid (mix)", f"{meta}: valid (meta)"])

    duplicate = write(tmp_path / "dup.json", [
        {"task_name": "same", "path": "idx/alpha", "abs_weight": 0.0, "transforms": "identty"},
        {"task_name": "same", "path": "idx/beta", "abs_weight": 0.0},
    ])
    code, out, _ = run_cli(capsys, "validate", str(duplicate))
    assert code == 2
    assert any(line.startswith(f"{duplicate}: $[1].task_name: ") and "same" in line for line in out.splitlines())
    assert any(line.startswith(f"{duplicate}: $[0].transforms: ") and "identity" in line for line in out.splitlines())


def test_script_transforms_are_named_with_the_flag_they_need(tmp_path: Path, capsys) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"input": f"q{i}", "output": f"answer {i}"}) + "\n" for i in range(5)))
    from fm9g.index.builder import BuildOptions, build_index

    build_index([records], tmp_path / "idx" / "a", BuildOptions(tokenizer="byte", workers=1, progress=False))
    (tmp_path / "add_template.py").write_text("def transform(data, num_sample, r):\n    return data\n")
    manifest = write(tmp_path / "mix.json", [
        {"task_name": "a", "path": "idx/a", "abs_weight": 1.0, "transforms": "add_template.py"}])
    code, out, _ = run_cli(capsys, "validate", str(manifest))
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"{manifest}: valid (mix)"
    assert len(lines) == 2 and "dataset 'a': transform script" in lines[1] and "--trust-scripts" in lines[1]
