"""Random access to an indexed dataset directory, fm9g's or the seed's, so seed datasets mix without conversion.

``IndexedDataset(path)`` memory-maps the offsets from ``index.h5`` (or parses the text ``index``
when there is no HDF5 file), so opening is cheap and ``ds[i]`` is one ``pread``. The constructor
checks that the index matches ``data.jsonl`` (the last offset equals the file size; line counts
agree with ``meta.json``) and, when ``meta.json`` records a ``data_checksum``, that ``data.jsonl`` still hashes
to it (:mod:`fm9g.index.checksum`: remembered per file, so re-opening an unchanged file is one
``stat``; ``FM9G_SKIP_DATA_CHECKSUM=1`` skips it). :meth:`IndexedDataset.verify` also hashes
every time and checks every line boundary.

Seed directories are read as they are: only ``index``; ``index.h5`` with only ``index``; a seed
``meta.json`` (or none). Some versions of the seed's ``convert_json2index.py`` wrote only the end
offset of each line (nlines numbers, no leading 0); such an index is recognised and a 0 prepended.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fm9g.core.errors import Fm9gError
from fm9g.index.checksum import check_data_checksum, checksum
from fm9g.index.format import DATA_FILE, INDEX_H5_FILE, INDEX_TEXT_FILE, META_FILE

__all__ = ["IndexedDataset", "checksum"]


def _rebuild_fix(path: Path) -> str:
    return f"rebuild it: fm9g index --input YOUR.jsonl --output {path} --force"


class IndexedDataset:
    """Records of one indexed dataset directory, by line number."""

    def __init__(self, path: str | os.PathLike[str], *, check_checksum: bool = True):
        self.path = Path(path)
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._open(check_checksum=check_checksum)

    # ------------------------------------------------------------------ opening and checks
    def _open(self, *, check_checksum: bool) -> None:
        """Load the offsets and check them against the data; ``check_checksum`` also hashes the data
        (left out when a worker process unpickles a dataset its parent opened and checked)."""
        path = self.path
        if not path.is_dir():
            raise Fm9gError("indexed dataset directory not found", where=str(path),
                            fix="build one with fm9g index --input FILE --output DIR")
        self.data_path = path / DATA_FILE
        if not self.data_path.is_file():
            raise Fm9gError(f"no {DATA_FILE} in the indexed dataset", where=str(path), fix=_rebuild_fix(path))
        self.meta: dict[str, Any] = self._read_meta()
        self.tokenizer_spec: str | None = None
        self.token_counts: np.ndarray | None = None
        h5_path = path / INDEX_H5_FILE
        text_path = path / INDEX_TEXT_FILE
        if h5_path.is_file():
            offsets = self._load_h5(h5_path)
        elif text_path.is_file():
            offsets = self._load_text(text_path)
        else:
            raise Fm9gError(f"no {INDEX_H5_FILE} or {INDEX_TEXT_FILE} beside {DATA_FILE}", where=str(path),
                            fix=_rebuild_fix(path))
        self._offsets = self._normalise(offsets)
        if self.tokenizer_spec is None and isinstance(self.meta.get("tokenizer"), str):
            self.tokenizer_spec = self.meta["tokenizer"]
        self._check_size()
        if h5_path.is_file() and text_path.is_file():
            self._check_text_agrees(text_path)
        expected = self.meta.get("data_checksum")
        if check_checksum and expected:
            check_data_checksum(self.data_path, str(expected), path / META_FILE, _rebuild_fix(path))

    def _read_meta(self) -> dict[str, Any]:
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            return {}
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise Fm9gError(f"unreadable {META_FILE}: {error}", where=str(meta_path), fix=_rebuild_fix(self.path)) from None
        if not isinstance(meta, dict):
            raise Fm9gError(f"{META_FILE} is not a JSON object", where=str(meta_path), fix=_rebuild_fix(self.path))
        return meta

    def _load_h5(self, h5_path: Path) -> np.ndarray:
        import h5py

        try:
            with h5py.File(h5_path, "r") as h5:
                if "index" not in h5:
                    raise Fm9gError("index.h5 has no dataset 'index'", where=str(h5_path), fix=_rebuild_fix(self.path))
                offsets = self._map_dataset(h5_path, h5["index"], np.int64)
                tokenizer = h5.attrs.get("tokenizer")
                if tokenizer is not None:
                    self.tokenizer_spec = tokenizer.decode() if isinstance(tokenizer, bytes) else str(tokenizer)
                if "tokens" in h5:
                    self.token_counts = self._map_dataset(h5_path, h5["tokens"], np.int32)
        except OSError as error:
            raise Fm9gError(f"unreadable HDF5 file ({error})", where=str(h5_path), fix=_rebuild_fix(self.path)) from None
        return offsets

    @staticmethod
    def _map_dataset(h5_path: Path, dataset: Any, dtype: type) -> np.ndarray:
        """Memory-map a contiguous, uncompressed HDF5 dataset; read anything else into memory."""
        if not np.issubdtype(dataset.dtype, np.integer):
            raise Fm9gError(f"dataset '{dataset.name}' holds {dataset.dtype}, not integers", where=str(h5_path))
        offset = dataset.id.get_offset()
        if offset is not None and dataset.chunks is None and dataset.compression is None and dataset.size > 0:
            mapped = np.memmap(h5_path, dtype=dataset.dtype, mode="r", offset=offset, shape=dataset.shape)
            return mapped if mapped.dtype == dtype else np.asarray(mapped, dtype=dtype)
        return np.asarray(dataset[()], dtype=dtype).reshape(dataset.shape)

    def _load_text(self, text_path: Path) -> np.ndarray:
        content = text_path.read_bytes()
        try:
            return np.array(content.split(), dtype=np.int64)
        except ValueError:
            raise Fm9gError("the text index holds something other than integers", where=str(text_path),
                            fix=_rebuild_fix(self.path)) from None

    def _normalise(self, offsets: np.ndarray) -> np.ndarray:
        where = str(self.path)
        if offsets.ndim != 1 or offsets.size == 0:
            raise Fm9gError("the index is empty", where=where, fix=_rebuild_fix(self.path))
        if offsets[0] != 0:
            # the seed's convert_json2index.py variant that writes only line ends
            offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.asarray(offsets, dtype=np.int64)])
        nlines = offsets.size - 1
        meta_lines = self.meta.get("nlines")
        if isinstance(meta_lines, int) and meta_lines != nlines:
            raise Fm9gError(
                f"the index has {nlines} lines but {META_FILE} says nlines={meta_lines}: index and data do not match",
                where=where, fix=_rebuild_fix(self.path))
        if self.token_counts is not None and self.token_counts.shape != (nlines, 2):
            raise Fm9gError(
                f"index.h5 'tokens' has shape {self.token_counts.shape}, expected ({nlines}, 2)",
                where=str(self.path / INDEX_H5_FILE), fix=_rebuild_fix(self.path))
        return offsets

    def _check_size(self) -> None:
        size = self.data_path.stat().st_size
        end = int(self._offsets[-1])
        if size != end:
            change = "truncated" if size < end else "appended to or modified"
            raise Fm9gError(
                f"{DATA_FILE} is {size} bytes but its index ends at byte {end}: the data file was {change} "
                "after indexing", where=str(self.data_path), fix=_rebuild_fix(self.path))
        meta_bytes = self.meta.get("nbytes")
        if isinstance(meta_bytes, int) and meta_bytes != size:
            raise Fm9gError(f"{DATA_FILE} is {size} bytes but {META_FILE} says nbytes={meta_bytes}",
                            where=str(self.data_path), fix=_rebuild_fix(self.path))

    def _check_text_agrees(self, text_path: Path) -> None:
        """The text index's last number must be the same file size (read from its tail only)."""
        with open(text_path, "rb") as handle:
            handle.seek(max(0, text_path.stat().st_size - 64))
            tail = handle.read().split()
        if not tail or int(tail[-1]) != int(self._offsets[-1]):
            raise Fm9gError(f"'{INDEX_TEXT_FILE}' and '{INDEX_H5_FILE}' disagree about the data size",
                            where=str(self.path), fix=_rebuild_fix(self.path))

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self._offsets.size - 1

    @property
    def offsets(self) -> np.ndarray:
        """The nlines+1 line-start offsets (the last one is the size of ``data.jsonl``)."""
        return self._offsets

    def _descriptor(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.data_path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        return self._fd

    def _position(self, i: int) -> int:
        index = operator.index(i)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"line {i} out of range for {self.path} ({n} lines)")
        return index

    def raw(self, i: int) -> bytes:
        """The bytes of line ``i`` including its line ending, exactly as stored."""
        index = self._position(i)
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        data = os.pread(self._descriptor(), end - start, start)
        if len(data) != end - start:
            raise Fm9gError(f"{DATA_FILE} ended before line {index + 1}", where=str(self.data_path),
                            fix=_rebuild_fix(self.path))
        return data

    def __getitem__(self, i: int) -> dict[str, Any]:
        raw = self.raw(i)
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise Fm9gError(f"line is not valid JSON ({error})", where=f"{self.data_path}:{self._position(i) + 1}",
                            fix=_rebuild_fix(self.path)) from None
        return record

    def read_many(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """The parsed records of ``indices``, in the order given."""
        return [self[i] for i in indices]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    # ------------------------------------------------------------------ full verification
    def verify(self) -> None:
        """Check everything (reads the whole data file): the checksum recorded in meta.json,
        increasing offsets, and that every line but the last ends at a newline."""
        offsets = np.asarray(self._offsets)
        if offsets.size > 1 and not np.all(np.diff(offsets) > 0):
            raise Fm9gError("the index offsets are not increasing", where=str(self.path), fix=_rebuild_fix(self.path))
        if offsets.size > 2:
            data = np.memmap(self.data_path, dtype=np.uint8, mode="r")
            if not np.all(data[offsets[1:-1] - 1] == ord("\n")):
                bad = int(np.argmax(data[offsets[1:-1] - 1] != ord("\n"))) + 1
                raise Fm9gError(f"line {bad} does not end where the index says",
                                where=f"{self.data_path}:{bad}", fix=_rebuild_fix(self.path))
        expected = self.meta.get("data_checksum")
        if expected:
            check_data_checksum(self.data_path, str(expected), self.path / META_FILE, _rebuild_fix(self.path),
                                always=True)

    # ------------------------------------------------------------------ pickling (worker processes)
    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self._fd = None
        self._fd_pid = None
        self._open(check_checksum=False)

    def close(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"IndexedDataset({str(self.path)!r}, {len(self)} lines)"

