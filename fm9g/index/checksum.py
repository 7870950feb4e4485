"""The ``data_checksum`` of an indexed dataset, checked when the dataset is opened.

``fm9g index`` records ``blake2b:<hex>`` of the whole ``data.jsonl`` in ``meta.json``. A same-size
edit of ``data.jsonl`` keeps every offset valid, so only this hash can tell that the records
trained on are no longer the ones indexed. Hashing reads the whole file (about 1 GB/s), so a
successful check is remembered in ``.fm9g-verified.json`` beside it, keyed by the file's size,
``st_mtime_ns`` and inode: re-opening an unchanged file costs one ``stat``. Any write changes the
mtime, a copy or replacement changes the inode, so either makes the next open hash again.

A result is remembered only when the file was last modified more than :data:`RACY_NS` before the
hash started: a write within the same timestamp tick as the last one would keep the mtime (git's
"racily clean" problem), so a freshly written file is hashed again on the next open. A directory
that cannot be written (read-only storage) is hashed on every open. What the key cannot see is a
deliberate edit that restores the old mtime; :meth:`IndexedDataset.verify` always hashes.

Set ``FM9G_SKIP_DATA_CHECKSUM=1`` to skip the check at open (e.g. a huge dataset on read-only
storage already verified elsewhere); sizes and line counts are still checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from fm9g.core.atomic import write_json_atomic
from fm9g.core.errors import Fm9gError

SKIP_ENV = "FM9G_SKIP_DATA_CHECKSUM"
VERIFIED_FILE = ".fm9g-verified.json"
RACY_NS = 2_000_000_000
"""How much older than the hash's start the file must be for the result to be remembered: the
coarsest common mtime granularity (FAT's 2 s; local filesystems tick every few milliseconds)."""
PROGRESS_BYTES = 256 << 20
"""Files at least this big show a progress bar (on a terminal) while they are hashed."""
_HASH_BLOCK = 8 << 20


def checksum(path: str | os.PathLike[str], algorithm: str = "blake2b", *, progress: bool = False) -> str:
    """``"ALGORITHM:<hex>"`` of a file, read in 8 MiB blocks; ``progress`` shows a tqdm bar on a terminal."""
    from tqdm import tqdm

    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle, tqdm(total=os.fstat(handle.fileno()).st_size, unit="B", unit_scale=True,
                                          unit_divisor=1000, desc=f"verify {path}", leave=False,
                                          disable=None if progress else True) as bar:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
            bar.update(len(block))
    return f"{algorithm}:{digest.hexdigest()}"


def _algorithm_of(expected: str, meta_path: Path, fix: str) -> str:
    """The hash algorithm named by a recorded ``data_checksum`` (``blake2b:...``; no variable-length ``shake_``)."""
    algorithm, sep, digest = expected.partition(":")
    if not sep or not digest or algorithm not in hashlib.algorithms_available or algorithm.startswith("shake_"):
        raise Fm9gError(f"data_checksum '{expected[:80]}' is not ALGORITHM:HEX with a known algorithm",
                        where=str(meta_path), fix=fix)
    return algorithm


def check_data_checksum(data_path: Path, expected: str, meta_path: Path, fix: str, *, always: bool = False) -> None:
    """Raise :class:`Fm9gError` unless ``data_path`` hashes to ``expected`` (see the module docstring);
    ``always`` hashes even when the file is remembered or the check is switched off."""
    if not always and os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return
    algorithm = _algorithm_of(expected, meta_path, fix)
    sidecar = data_path.parent / VERIFIED_FILE
    before = _file_key(data_path)
    if not always and _remembered(sidecar) == {**before, "data_checksum": expected}:
        return
    started = time.time_ns()
    actual = checksum(data_path, algorithm, progress=before["size"] >= PROGRESS_BYTES)
    if actual != expected:
        raise Fm9gError(f"{data_path.name} checksum is {actual}, {meta_path.name} recorded {expected}: the data "
                        "was modified after indexing", where=str(data_path), fix=fix)
    if _file_key(data_path) == before and before["mtime_ns"] < started - RACY_NS:
        try:
            write_json_atomic(sidecar, {**before, "data_checksum": expected})
        except OSError:  # read-only storage: verified, just not remembered
            pass


def _file_key(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def _remembered(sidecar: Path) -> dict | None:
    try:
        document = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable or torn by hand: hash again
        return None
    return document if isinstance(document, dict) else None
