"""IndexedDataset: random access, seed directories, and detection of mismatched or damaged data."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from index_helpers import seed_index_text, seed_write_dir, write_jsonl

from fm9g.core.errors import Fm9gError
from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.reader import IndexedDataset


@pytest.fixture
def built(tmp_path: Path, records: list[dict]) -> Path:
    source = write_jsonl(tmp_path / "r.jsonl", records)
    build_index([source], tmp_path / "idx", BuildOptions(tokenizer="byte", workers=1, progress=False))
    return tmp_path / "idx"


def test_random_access_api(built: Path, records: list[dict]) -> None:
    ds = IndexedDataset(built)
    assert len(ds) == len(records) and ds.path == built
    assert ds[3] == records[3] and ds[-1] == records[-1] and ds[np.int64(2)] == records[2]
    assert ds.read_many([4, 0, 4]) == [records[4], records[0], records[4]]
    lines = (built / "data.jsonl").read_bytes().splitlines(keepends=True)
    assert ds.raw(1) == lines[1]
    assert ds.token_counts.dtype == np.int32 and ds.token_counts.shape == (5, 2)
    assert ds.tokenizer_spec == "byte" and ds.meta["nlines"] == 5
    assert isinstance(ds.offsets, np.memmap)  # contiguous HDF5 dataset, mapped not loaded
    with pytest.raises(IndexError):
        ds[5]
    ds.verify()
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[2] == records[2] and len(pickle.dumps(ds)) < 500


@pytest.mark.parametrize("layout", ["text_only", "h5_only", "both"])
def test_reads_seed_directories(tmp_path: Path, records: list[dict], layout: str) -> None:
    directory = seed_write_dir(tmp_path / "seed", records, h5=layout != "text_only", text=layout != "h5_only")
    ds = IndexedDataset(directory)
    assert [ds[i] for i in range(len(ds))] == records
    assert ds.meta == {} and ds.token_counts is None and ds.tokenizer_spec is None
    ds.verify()


def test_reads_seed_meta_and_end_offsets_only_index(tmp_path: Path, records: list[dict]) -> None:
    """Some seed convert_json2index.py versions write only line ends (nlines numbers, no leading 0)."""
    directory = seed_write_dir(tmp_path / "seed", records, h5=False)
    ends = seed_index_text(directory / "data.jsonl").split()[1:]
    (directory / "index").write_bytes(b"".join(e + b"\n" for e in ends))
    seed_meta = {"language": "zh", "nlines": len(records), "nbytes": (directory / "data.jsonl").stat().st_size,
                 "length_distribute": {"less_4k": len(records)}, "avg_token_per_line": 12.5,
                 "data_sample": records[0]}
    (directory / "meta.json").write_text(json.dumps(seed_meta, ensure_ascii=False) + "\n", encoding="utf-8")
    ds = IndexedDataset(directory)
    assert [ds[i] for i in range(len(ds))] == records and ds.meta["language"] == "zh"


def test_truncated_data_is_rejected_with_fix(built: Path) -> None:
    data = built / "data.jsonl"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(Fm9gError, match="truncated") as caught:
        IndexedDataset(built)
    assert "data.jsonl" in str(caught.value) and "--force" in str(caught.value)


def test_appended_data_is_rejected(built: Path) -> None:
    with open(built / "data.jsonl", "ab") as handle:
        handle.write(b'{"input": "", "output": "extra"}\n')
    with pytest.raises(Fm9gError, match="appended to or modified"):
        IndexedDataset(built)


def test_shifted_lines_are_caught_by_verify(tmp_path: Path, records: list[dict]) -> None:
    directory = seed_write_dir(tmp_path / "seed", records, h5=False)
    data = directory / "data.jsonl"
    lines = data.read_bytes().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    data.write_bytes(b"".join(lines))
    with pytest.raises(Fm9gError, match="does not end where the index says"):
        IndexedDataset(directory).verify()


def test_mismatched_index_and_meta(built: Path, tmp_path: Path) -> None:
    meta = json.loads((built / "meta.json").read_text(encoding="utf-8"))
    meta["nlines"] = 7
    (built / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(Fm9gError, match="nlines=7"):
        IndexedDataset(built)


def test_text_and_h5_index_must_agree(built: Path) -> None:
    text = (built / "index").read_bytes().split()
    (built / "index").write_bytes(b"\n".join(text[:-1] + [b"99999"]) + b"\n")
    with pytest.raises(Fm9gError, match="disagree"):
        IndexedDataset(built)


def test_missing_pieces(built: Path, tmp_path: Path) -> None:
    with pytest.raises(Fm9gError, match="not found"):
        IndexedDataset(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(built / "data.jsonl", bare / "data.jsonl")
    with pytest.raises(Fm9gError, match="no index.h5 or index"):
        IndexedDataset(bare)
    (built / "data.jsonl").unlink()
    with pytest.raises(Fm9gError, match="no data.jsonl"):
        IndexedDataset(built)


def test_wrong_tokens_shape_and_broken_h5(built: Path) -> None:
    with h5py.File(built / "index.h5", "a") as h5:
        del h5["tokens"]
        h5.create_dataset("tokens", data=np.zeros((3, 2), dtype=np.int32))
    with pytest.raises(Fm9gError, match="expected \\(5, 2\\)"):
        IndexedDataset(built)
    (built / "index.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(Fm9gError, match="unreadable HDF5"):
        IndexedDataset(built)


def test_bad_line_in_seed_data_names_the_line(tmp_path: Path, records: list[dict]) -> None:
    directory = seed_write_dir(tmp_path / "seed", records, h5=False)
    data = directory / "data.jsonl"
    lines = data.read_bytes().splitlines(keepends=True)
    lines[2] = b"{broken" + b" " * (len(lines[2]) - 8) + b"\n"
    data.write_bytes(b"".join(lines))
    ds = IndexedDataset(directory)
    with pytest.raises(Fm9gError, match="data.jsonl:3"):
        ds[2]
