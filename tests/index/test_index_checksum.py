"""The data checksum is checked when an index is opened, remembered per (size, mtime, inode), and can be skipped."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from index_helpers import seed_write_dir, write_jsonl

from fm9g.core.errors import Fm9gError
from fm9g.index.builder import BuildOptions, build_index
from fm9g.index.checksum import RACY_NS, SKIP_ENV, VERIFIED_FILE
from fm9g.index.reader import IndexedDataset

HOUR_NS = 3600 * 10**9


@pytest.fixture
def built(tmp_path: Path, records: list[dict]) -> Path:
    source = write_jsonl(tmp_path / "r.jsonl", records)
    build_index([source], tmp_path / "idx", BuildOptions(workers=1, progress=False))
    return tmp_path / "idx"


def _edit_same_size(data: Path) -> None:
    """Turn '4 is the answer' into '5 is the answer': every offset stays valid."""
    content = bytearray(data.read_bytes())
    content[content.index(b"4 is")] = ord("5")
    data.write_bytes(bytes(content))


def _age(path: Path, ns: int = HOUR_NS) -> None:
    """Make ``path`` look last written ``ns`` ago (older than the racy window)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - ns))


def test_same_size_edit_fails_at_open_naming_the_file_and_the_fix(built: Path) -> None:
    _edit_same_size(built / "data.jsonl")
    with pytest.raises(Fm9gError, match="checksum is blake2b:.* meta.json recorded blake2b:.*modified after indexing") \
            as caught:
        IndexedDataset(built)
    assert caught.value.where == str(built / "data.jsonl") and "fm9g index" in caught.value.fix \
        and "--force" in caught.value.fix


def test_verification_is_remembered_until_the_file_changes(built: Path) -> None:
    data = built / "data.jsonl"
    _age(data)
    IndexedDataset(built)
    remembered = json.loads((built / VERIFIED_FILE).read_text(encoding="utf-8"))
    stat = data.stat()
    assert remembered == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino,
                          "data_checksum": IndexedDataset(built).meta["data_checksum"]}
    # the fast path trusts the key and does not read the data: an edit that restores size, mtime and
    # inode is not seen at open (the documented trade-off), while verify() always hashes
    _edit_same_size(data)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    ds = IndexedDataset(built)
    with pytest.raises(Fm9gError, match="checksum"):
        ds.verify()
    # any ordinary write moves the mtime, so the next open hashes again and fails
    data.write_bytes(data.read_bytes())
    with pytest.raises(Fm9gError, match="checksum"):
        IndexedDataset(built)


def test_a_copy_with_the_same_mtime_is_hashed_again(built: Path, tmp_path: Path) -> None:
    data = built / "data.jsonl"
    _age(data)
    IndexedDataset(built)
    assert (built / VERIFIED_FILE).is_file()
    stat = data.stat()
    replacement = bytearray(data.read_bytes())
    replacement[replacement.index(b"4 is")] = ord("5")
    (built / "other").write_bytes(bytes(replacement))
    os.replace(built / "other", data)  # a new inode, same size, same mtime
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.stat().st_ino != stat.st_ino
    with pytest.raises(Fm9gError, match="checksum"):
        IndexedDataset(built)


def test_a_freshly_written_file_is_not_remembered(built: Path) -> None:
    data = built / "data.jsonl"
    _age(data, RACY_NS // 4)  # inside the window where a same-tick write would keep the mtime
    IndexedDataset(built)
    assert not (built / VERIFIED_FILE).exists()


def test_skip_variable_opens_modified_data(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _edit_same_size(built / "data.jsonl")
    monkeypatch.setenv(SKIP_ENV, "1")
    ds = IndexedDataset(built)
    assert ds[3]["output"].startswith("5 is")
    with pytest.raises(Fm9gError, match="checksum"):
        ds.verify()  # verify() is an explicit request: it hashes anyway
    monkeypatch.setenv(SKIP_ENV, "0")
    with pytest.raises(Fm9gError, match="checksum"):
        IndexedDataset(built)


def test_unknown_checksum_algorithm_is_a_clear_error(built: Path) -> None:
    meta_path = built / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["data_checksum"] = "crc99:abc"
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(Fm9gError, match="crc99:abc.*ALGORITHM:HEX") as caught:
        IndexedDataset(built)
    assert caught.value.where == str(meta_path)


def test_seed_directories_without_checksum_still_open(tmp_path: Path, records: list[dict]) -> None:
    directory = seed_write_dir(tmp_path / "seed", records)
    (directory / "meta.json").write_text(json.dumps({"language": "zh", "nlines": len(records)}), encoding="utf-8")
    assert len(IndexedDataset(directory)) == len(records)
    assert not (directory / VERIFIED_FILE).exists()


def test_unpickled_dataset_is_not_hashed_again(built: Path) -> None:
    ds = IndexedDataset(built)
    _edit_same_size(built / "data.jsonl")  # after the parent's check; a worker reopens without hashing
    assert pickle.loads(pickle.dumps(ds))[3]["output"].startswith("5 is")

