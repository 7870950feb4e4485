"""The on-disk layout of an indexed dataset (the seed's, so either tool reads the other's output) and its conventions.

A directory holds ``data.jsonl`` (one record per line), ``index`` (text: the byte offset of every
line start, then the file size — nlines+1 numbers, each followed by ``\\n``, exactly what the
seed's ``IndexedDatasetBuilder`` writes), ``index.h5`` (dataset ``index``: the same offsets as
int64; fm9g adds ``tokens`` int32 [nlines, 2]) and ``meta.json``.
"""

from __future__ import annotations

import copy
import heapq
from typing import Any

DATA_FILE = "data.jsonl"
INDEX_TEXT_FILE = "index"
INDEX_H5_FILE = "index.h5"
META_FILE = "meta.json"

FORMAT_VERSION = 1
"""Version of fm9g's additions (``tokens``, checksum, ...); the seed's own files carry none."""

LENGTH_BUCKETS: tuple[tuple[str, int], ...] = (
    ("less_4k", 4000),
    ("4k-8k", 8000),
    ("8k-16k", 16000),
    ("16k-32k", 32000),
    ("32k-64k", 64000),
    ("64k-128k", 128000),
    ("128k-256k", 256000),
    ("more_256k", -1),
)
"""The seed's ``length_distribute`` buckets: name and exclusive upper bound (the seed uses 4000, not 4096)."""

LANGUAGE_VOTES = 100
"""Records whose script votes for the dataset language when ``--language`` is not given: those of
the smallest line hashes, a uniform sample of the whole input that does not depend on chunking."""


def merge_votes(*parts: Any) -> list[list[int]]:
    """The :data:`LANGUAGE_VOTES` smallest ``(hash, is Chinese)`` votes of the parts together."""
    return [list(vote) for vote in heapq.nsmallest(LANGUAGE_VOTES, (tuple(vote) for part in parts for vote in part))]


SAMPLE_STRING_LIMIT = 50
"""The seed truncates every string of ``data_sample`` in meta.json to 50 characters plus ``...``."""


def length_distribution(token_counts: Any) -> dict[str, int]:
    """Count lines per seed bucket from an array of per-line token totals."""
    import numpy as np

    counts = np.asarray(token_counts)
    result: dict[str, int] = {}
    lower = 0
    for name, upper in LENGTH_BUCKETS:
        if upper < 0:
            result[name] = int(np.count_nonzero(counts >= lower))
        else:
            result[name] = int(np.count_nonzero((counts >= lower) & (counts < upper)))
        lower = upper
    return result


def truncate_sample(record: dict[str, Any]) -> dict[str, Any]:
    """``data_sample`` as the seed writes it: strings cut to 50 characters + ``...``, lists to one item."""

    def shorten(value: Any) -> Any:
        if isinstance(value, str) and len(value) > SAMPLE_STRING_LIMIT:
            return value[:SAMPLE_STRING_LIMIT] + "..."
        if isinstance(value, list):
            return [shorten(item) for item in value[:1]]
        if isinstance(value, dict):
            return {key: shorten(item) for key, item in value.items()}
        return value

    return shorten(copy.deepcopy(record))
