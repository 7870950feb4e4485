"""``meta.json`` of an indexed dataset: the seed's fields, in the seed's order, then fm9g's."""

from __future__ import annotations

from typing import Any

from fm9g import __version__
from fm9g.index.format import FORMAT_VERSION, LENGTH_BUCKETS, merge_votes, truncate_sample


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
    record_forms: dict[str, int] | None = None,
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
        **({"record_forms": dict(sorted(record_forms.items()))} if record_forms is not None else {}),
        "fm9g_version": __version__,
    }


ESTIMATE_FACTOR = {"zh": 0.7, "en": 1.5}
"""The seed's token estimate without a tokenizer: per character (zh) and per space-separated word (en)."""


def detected_language(tallies: dict[str, Any]) -> str:
    """``zh`` when most voting records are mostly Chinese, else ``en``."""
    votes = tallies["votes"]
    return "zh" if votes and sum(vote for _, vote in votes) * 2 > len(votes) else "en"


def meta_from_tallies(tallies: dict[str, Any], *, language: str | None, tokenizer: str | None,
                      tokenizer_fingerprint: str | None, data_sample: dict[str, Any] | None, data_checksum: str,
                      sources: list[str]) -> dict[str, Any]:
    """meta.json from a build's tallies (integer sums, so the result does not depend on how the input
    was cut into chunks or shards); the estimate factors are applied once, here."""
    language = language or detected_language(tallies)
    key = "tokens" if tokenizer else language
    counts = tallies["buckets"].get(key, {})
    return compose_meta(
        language=language, nlines=tallies["nlines"], nbytes=tallies["nbytes"],
        length_distribute={name: int(counts.get(name, 0)) for name, _ in LENGTH_BUCKETS},
        total_tokens=tallies["totals"].get(key, 0) * ESTIMATE_FACTOR.get(key, 1), data_sample=data_sample,
        tokenizer=tokenizer, tokenizer_fingerprint=tokenizer_fingerprint, data_checksum=data_checksum,
        skipped=tallies["skipped"], normalized=tallies["normalized"], sources=sources,
        record_forms=tallies.get("record_forms"))


def merge_tallies(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The tallies of the concatenation of the parts' inputs."""
    merged: dict[str, Any] = {"nlines": 0, "nbytes": 0, "skipped": {}, "normalized": {}, "votes": [],
                              "buckets": {}, "totals": {}}
    for part in parts:
        for key in ("nlines", "nbytes"):
            merged[key] += part[key]
        merged["votes"] = merge_votes(merged["votes"], part["votes"])
        for key in ("skipped", "normalized", "totals"):
            _add_counts(merged[key], part[key])
        if "record_forms" in part:
            _add_counts(merged.setdefault("record_forms", {}), part["record_forms"])
        for name, counts in part["buckets"].items():
            _add_counts(merged["buckets"].setdefault(name, {}), counts)
    return merged


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, count in counts.items():
        into[name] = into.get(name, 0) + count
