"""A mixture that is no longer what the manifest asked for stops the run with one clear error.

Failing transforms (beyond ``max_transform_errors``), malformed transform output, datasets that
leave the mix unplanned, and empty mixtures; lone surrogates are counted skips, as in ``fm9g index``.
Transforms here are real seed scripts run with ``trust_scripts``; datasets are real indexed ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixer_helpers import numbered_records, write_manifest, write_seed_dataset
from fm9g.cli import main as fm9g_main
from fm9g.core.errors import Fm9gError
from fm9g.mixer.materialized import MaterializedWriter
from fm9g.mixer.stream import MixtureStream

FAILS_EVERY_FIFTH = '''
def transform(data, num_sample, r):
    row = int(data["output"].split(":")[1])
    if row % 5 == 0:
        raise ValueError(f"cannot parse row {row}")
    return data
'''


def mix_with_script(root: Path, script: str, *, rows: int = 20, allow_repeat: bool = False, **entry) -> Path:
    """dataset 'bad' (rows through ``script``) and dataset 'good' (identity), equal weights."""
    (root / "transform.py").write_text(script)
    write_seed_dataset(root / "bad", numbered_records("bad", rows))
    write_seed_dataset(root / "good", numbered_records("good", 40))
    return write_manifest(root / "mix.json", [
        {"task_name": "bad", "path": "bad", "abs_weight": 1.0, "transform": "./transform.py",
         "allow_repeat": allow_repeat, **entry},
        {"task_name": "good", "path": "good", "abs_weight": 1.0},
    ], max_length=128)


def drain(manifest: Path, **options) -> MixtureStream:
    stream = MixtureStream.from_manifest(manifest, trust_scripts=True, **options)
    for _ in zip(range(10_000), stream):
        pass
    return stream


def test_a_raising_transform_stops_the_run_naming_dataset_row_and_error(tmp_path):
    manifest = mix_with_script(tmp_path, FAILS_EVERY_FIFTH)
    with pytest.raises(Fm9gError) as caught:
        drain(manifest)
    message = str(caught.value)
    assert "dataset 'bad'" in message and "ValueError: cannot parse row" in message and "$.datasets[0]" in message
    row = int(message.split("on row ")[1].split()[0])
    assert row % 5 == 0 and f"cannot parse row {row}" in message
    assert '"max_transform_errors": N' in message and "(now 0)" in message


def test_fm9g_mix_exits_2_with_one_line_and_writes_no_mixture(tmp_path, capsys):
    manifest = mix_with_script(tmp_path, FAILS_EVERY_FIFTH)
    code = fm9g_main(["mix", "--manifest", str(manifest), "--trust-scripts", "--output", str(tmp_path / "out"),
                      "--samples", "50"])
    error = capsys.readouterr().err
    assert code == 2
    lines = [line for line in error.splitlines() if "error:" in line]
    assert len(lines) == 1 and "dataset 'bad'" in lines[0] and "ValueError" in lines[0]
    assert not (tmp_path / "out").exists()


def test_max_transform_errors_turns_that_many_failures_into_counted_skips(tmp_path):
    manifest = mix_with_script(tmp_path, FAILS_EVERY_FIFTH, max_transform_errors=4)
    stream = drain(manifest)
    bad = stream.progress[0]
    assert bad.counts == {"transform_error": 4} and bad.left_reason == "exhausted" and bad.samples == 16
    report = tmp_path / "report.json"
    assert fm9g_main(["mix", "--manifest", str(manifest), "--trust-scripts", "--report", str(report)]) == 0
    document = json.loads(report.read_text())
    assert document["datasets"][0]["dropped"] == {"transform_error": 4}
    assert document["plan"]["datasets"][0]["sampled_transform_failures"] == 4


def test_one_failure_beyond_the_allowance_is_the_error(tmp_path):
    with pytest.raises(Fm9gError, match=r"\(now 3, 3 skipped so far\)"):
        drain(mix_with_script(tmp_path, FAILS_EVERY_FIFTH, max_transform_errors=3))


def test_the_plan_warns_when_sampled_rows_fail_beyond_the_allowance(tmp_path, capsys):
    manifest = mix_with_script(tmp_path, FAILS_EVERY_FIFTH, max_transform_errors=1)
    assert fm9g_main(["mix", "--manifest", str(manifest), "--trust-scripts", "--plan-only"]) == 0
    out = capsys.readouterr().out
    assert "the transform failed on 4 of the 20 rows sampled" in out and "max_transform_errors=1" in out


@pytest.mark.parametrize("returned, problem", [
    ("[data['output']]", "returned list, not a dict with string 'input' and 'output'"),
    ("{'input': 3, 'output': 'x'}", "'input' is int, not a string"),
    ("{'input': '', 'output': None}", "'output' is NoneType, not a string"),
])
def test_malformed_transform_output_stops_the_run(tmp_path, returned, problem):
    script = f"def transform(data, num_sample, r):\n    return {returned}\n"
    with pytest.raises(Fm9gError) as caught:
        drain(mix_with_script(tmp_path, script))
    assert problem in str(caught.value) and "dataset 'bad'" in str(caught.value) and "on row " in str(caught.value)


def test_a_transform_failing_on_every_row_is_an_error_even_when_allowed(tmp_path, capsys):
    script = "def transform(data, num_sample, r):\n    raise KeyError('instruction')\n"
    manifest = mix_with_script(tmp_path, script, allow_repeat=True, max_transform_errors=1000)
    with pytest.raises(Fm9gError, match=r"every one of the 20 rows of dataset 'bad' was dropped in epoch 0 "
                                        r"\(dropped so far: transform_error 20\)"):
        drain(manifest)
    code = fm9g_main(["mix", "--manifest", str(manifest), "--trust-scripts", "--output", str(tmp_path / "out")])
    assert code == 2 and "would leave the mixture" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_row_too_long_is_an_error_not_a_silent_exit(make_mix):
    manifest = make_mix({"long": (10, 1.0), "ok": (10, 1.0)}, max_length=16,
                        dataset_options={"long": {"oversize_rule": "drop"}})
    stream = MixtureStream.from_manifest(manifest)
    with pytest.raises(Fm9gError, match=r"dataset 'long' was dropped in epoch 0 \(dropped so far: "):
        list(stream)


def test_planned_exhaustion_is_no_error(make_mix):
    manifest = make_mix({"once": (5, 1.0), "more": (30, 1.0)},
                        dataset_options={"once": {"allow_repeat": False}, "more": {"max_epochs": 2}})
    stream = MixtureStream.from_manifest(manifest)
    assert len(list(stream)) > 0
    assert [state.left_reason for state in stream.progress] == ["exhausted", "max_epochs reached"]


def test_a_dataset_without_rows_is_an_error(tmp_path):
    write_seed_dataset(tmp_path / "empty", [])
    write_seed_dataset(tmp_path / "full", numbered_records("full", 5))
    manifest = write_manifest(tmp_path / "mix.json", [
        {"task_name": "empty", "path": "empty", "abs_weight": 1.0},
        {"task_name": "full", "path": "full", "abs_weight": 1.0}], max_length=64)
    with pytest.raises(Fm9gError, match="dataset 'empty' has no rows"):
        MixtureStream.from_manifest(manifest)


def test_a_stream_without_any_batch_says_so(make_mix):
    stream = MixtureStream.from_manifest(make_mix({"a": (5, 1.0)}), max_samples=0)
    with pytest.raises(Fm9gError, match="the mixture has no batch"):
        next(stream)


def test_a_mixture_of_no_batches_is_never_written(tmp_path):
    writer = MaterializedWriter(tmp_path / "out", capacity=64)
    with pytest.raises(Fm9gError, match="the stream gave no batch, so there is no mixture to write"):
        writer.finish(settings={}, final_state={}, report={})
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


LONE_SURROGATE = '''
def transform(data, num_sample, r):
    row = int(data["output"].split(":")[1])
    return {"input": "", "output": "\\ud800" if row % 4 == 0 else data["output"]}
'''


@pytest.mark.parametrize("tokenizer", ["byte", "hf"])
def test_lone_surrogates_from_a_transform_are_counted_skips(tmp_path, tokenizer):
    from mixer_helpers import build_tokenizer

    manifest = mix_with_script(tmp_path, LONE_SURROGATE)
    spec = f"hf:{build_tokenizer(tmp_path / 'tok')}" if tokenizer == "hf" else "byte"
    stream = drain(manifest, tokenizer=spec)
    assert stream.progress[0].counts == {"invalid_utf8": 5} and stream.progress[0].samples == 15


def test_lone_surrogates_in_the_data_are_counted_skips(tmp_path, capsys):
    records = numbered_records("raw", 6)
    records[2]["output"] = "broken \ud83d text"
    write_seed_dataset(tmp_path / "raw", records, ensure_ascii=True)
    manifest = write_manifest(tmp_path / "mix.json", [{"task_name": "raw", "path": "raw", "abs_weight": 1.0,
                                                       "allow_repeat": False}], max_length=64)
    report = tmp_path / "report.json"
    assert fm9g_main(["mix", "--manifest", str(manifest), "--report", str(report)]) == 0
    assert json.loads(report.read_text())["datasets"][0]["dropped"] == {"invalid_utf8": 1}
    assert "lone surrogate" in capsys.readouterr().err
