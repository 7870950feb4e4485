"""``meta.json`` of an indexed dataset: the seed's fields, in the seed's order, then fm9g's."""

from __future__ import annotations

from typing import Any

from fm9g import __version__
from fm9g.index.format import FORMAT_VERSION, truncate_sample


def compose_meta(
    *,
    language: str,
    nlines: int,
    nbytes: int,
    length_distribute: dict[str, int],
    total_tokens: float,
    data_sample: dict[str, Any] | None,
    tokenizer: str | None,
    tokenizer_fingerprint: str | None,
    data_checksum: str,
    skipped: dict[str, int],
    normalized: dict[str, int],
    sources: list[str],
) -> dict[str, Any]:
    """The meta.json document.

    Without a tokenizer, ``avg_token_per_line`` and ``length_distribute`` use the seed's own
    estimate (0.7 tokens per character for zh, 1.5 per space-separated word for en) over
    ``input + output``; ``token_count_method`` says which was used.
    """
    return {
        "language": language,
        "nlines": nlines,
        "nbytes": nbytes,
        "length_distribute": length_distribute,
        "avg_token_per_line": total_tokens / nlines if nlines else 0.0,
        "hdfs_path": "",
        "data_sample": truncate_sample(data_sample) if data_sample is not None else None,
        "tokenizer": tokenizer,
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "token_count_method": "tokenizer" if tokenizer else "seed-estimate",
        "total_tokens": int(round(total_tokens)),
        "data_checksum": data_checksum,
        "format_version": FORMAT_VERSION,
        "skipped": dict(sorted(skipped.items())),
        "normalized": dict(sorted(normalized.items())),
        "sources": sources,
        "fm9g_version": __version__,
    }
