"""Bounded runs: exactly ``--samples`` samples, a sane ``max_length``, memory that a huge row
cannot grow without end."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from mixer_helpers import batch_samples, numbered_records, write_manifest, write_seed_dataset
from fm9g.cli import main as fm9g_main
from fm9g.core.errors import Fm9gError, ValidationFailed
from fm9g.mixer.manifest import load_manifest
from fm9g.mixer.stream import MixtureStream


def starts(batches, stream) -> list[tuple[str, int | None, bool]]:
    return [piece for batch in batches for piece in batch_samples(batch, stream.task_names, stream.tokenizer)]


@pytest.mark.parametrize("count", [1, 10, 37])
def test_max_samples_yields_exactly_that_many_whole_samples(make_mix, count):
    """Segmented samples included: the last one's later windows are still packed."""
    manifest = make_mix({"a": (30, 1.0), "b": (30, 2.0)}, max_length=32, batch_size=4)
    stream = MixtureStream.from_manifest(manifest, max_samples=count)
    batches = list(stream)
    pieces = starts(batches, stream)
    assert sum(first for _, _, first in pieces) == count
    unlimited = MixtureStream.from_manifest(manifest)
    reference = starts([next(unlimited) for _ in range(len(batches))], unlimited)
    assert pieces == reference[:len(pieces)]
    assert len(reference) == len(pieces) or reference[len(pieces)][2], "the last sample was cut short"


def test_fm9g_mix_samples_means_exactly_n(make_mix, tmp_path):
    manifest = make_mix({"a": (200, 1.0), "b": (200, 1.0)}, max_length=512, batch_size=8)
    report = tmp_path / "report.json"
    assert fm9g_main(["mix", "--manifest", str(manifest), "--samples", "10", "--report", str(report)]) == 0
    document = json.loads(report.read_text())
    assert document["samples"] == 10 and sum(entry["samples"] for entry in document["datasets"]) == 10


@pytest.mark.parametrize("value", [10**11, 1e11, 1048577])
def test_max_length_has_an_upper_bound_in_the_manifest(tmp_path, value):
    write_seed_dataset(tmp_path / "a", numbered_records("a", 3))
    manifest = write_manifest(tmp_path / "mix.json", [{"task_name": "a", "path": "a", "abs_weight": 1.0}],
                              max_length=value)
    with pytest.raises(ValidationFailed, match=r"\$\.max_length: .* is greater than the maximum of 1048576"):
        load_manifest(manifest)


def test_max_length_overrides_get_the_same_bound(make_mix):
    manifest = make_mix({"a": (3, 1.0)}, max_length=1 << 20)
    assert MixtureStream.from_manifest(manifest).max_length == 1 << 20
    for value in (10**11, 4, 4096.0):
        with pytest.raises(Fm9gError, match=rf"max_length must be an integer from 8 to 1,048,576, got {value!r}"):
            MixtureStream.from_manifest(manifest, max_length=value)


def test_a_huge_dropped_row_does_not_stay_in_memory_once_per_epoch(tmp_path):
    """One 1 MB row among short ones under ``drop``: each epoch gives one short sample, so a batch
    needs dozens of epochs, and every epoch tokenizes the huge row again. Its tokens must be freed
    with its chunk; when packed pieces kept whole chunks alive, a batch held 8 MB per epoch."""
    row_bytes = 1 << 20
    write_seed_dataset(tmp_path / "huge", [{"input": "", "output": "y" * row_bytes}, {"input": "", "output": "short"}])
    manifest = write_manifest(tmp_path / "mix.json", [{"task_name": "huge", "path": "huge", "abs_weight": 1.0,
                                                       "oversize_rule": "drop"}], max_length=128, batch_size=2)
    stream = MixtureStream.from_manifest(manifest)
    tracemalloc.start()
    try:
        batch = next(stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    epochs = stream.progress[0].epoch
    assert epochs >= 40 and batch.num_tokens > 200
    # building one chunk of the row peaks at ~35 MB (its ids, src, tgt, prompt marks); the leak
    # kept 8 MB more for each of the >= 40 epochs (~360 MB at the peak here)
    assert peak < 100 << 20, f"{peak / 1e6:.0f} MB at the peak over {epochs} epochs"
