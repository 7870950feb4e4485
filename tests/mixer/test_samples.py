"""Samples: pre-shifted targets, prompt masking, bos/eos, oversize rules, counted reasons."""

from __future__ import annotations

import numpy as np
import pytest

from fm9g.mixer.samples import IGNORE_INDEX, STATUS_NAMES, build_chunk, tokenize_samples, windows
from fm9g.tokenizers import load_tokenizer

BYTE = load_tokenizer("byte")


def ids(text: str) -> list[int]:
    return BYTE.encode(text)


def test_src_and_pre_shifted_tgt():
    src, tgt, layout = tokenize_samples(BYTE, ["ab", ""], ["xyz", "q"])
    assert src.tolist() == [BYTE.bos_id, *ids("ab"), *ids("xyz"), BYTE.bos_id, *ids("q")]
    assert tgt.tolist() == [IGNORE_INDEX, IGNORE_INDEX, *ids("xyz"), BYTE.eos_id, *ids("q"), BYTE.eos_id]
    assert layout.tolist() == [[0, 2, 6], [6, 0, 2]]


def chunk(records, rule="segment", max_length=16, transform=None):
    rows = np.arange(len(records))
    return build_chunk(records, rows, epoch=0, start=0, nlines=len(records),
                       transform=transform or (lambda record, n, rng: record), tokenizer=BYTE,
                       max_length=max_length, oversize_rule=rule, base_key=1)


@pytest.mark.parametrize("rule, status, kept", [("drop", "too_long", 0), ("head", "truncated", 16), ("segment", "segmented", 31)])
def test_oversize_rules(rule, status, kept):
    result = chunk([{"input": "abc", "output": "o" * 27}], rule=rule)
    assert STATUS_NAMES[result.status[0]] == status
    assert result.kept[0] == kept


def test_long_prompt_drops_the_sample_whatever_the_rule():
    for rule in ("drop", "head", "segment"):
        result = chunk([{"input": "p" * 14, "output": "o"}, {"input": "p" * 13, "output": "o"}], rule=rule)
        assert [STATUS_NAMES[s] for s in result.status] == ["input_too_long", "ok"]
        assert result.kept.tolist() == [0, 15]


def test_segment_windows_cover_the_sample_and_keep_next_token_targets():
    result = chunk([{"input": "abc", "output": "o" * 20 + "z" * 20}], max_length=16)
    pieces = windows(int(result.offsets[0]), int(result.kept[0]), 16)
    assert [end - begin for begin, end in pieces] == [16, 16, 12]
    for begin, end in pieces[:-1]:
        assert result.tgt[end - 1] == result.src[end]
    assert result.tgt[pieces[-1][1] - 1] == BYTE.eos_id


def test_transform_failures_are_counted_not_raised():
    def flaky(record, num_sample, rng):
        if record["output"] == "boom":
            raise ValueError("bad row")
        if record["output"] == "wrong":
            return {"input": 3, "output": "x"}
        return record

    result = chunk([{"input": "", "output": "boom"}, {"input": "", "output": "wrong"}, {"input": "", "output": "ok"}],
                   transform=flaky)
    assert [STATUS_NAMES[s] for s in result.status] == ["transform_error", "bad_transform_output", "ok"]
    assert result.kept.tolist() == [0, 0, 3]
    assert "bad row" in result.errors[0]


def test_transform_rng_is_deterministic_per_row():
    def noisy(record, num_sample, rng):
        return {"input": "", "output": f"{num_sample}:{rng.random():.6f}"}

    first = chunk([{"output": "a"}, {"output": "b"}], transform=noisy)
    second = chunk([{"output": "a"}, {"output": "b"}], transform=noisy)
    assert first.src.tolist() == second.src.tolist()
    assert BYTE.decode(first.src.tolist()).startswith("0:")


def test_row_random_matches_an_eagerly_seeded_random():
    import random

    from fm9g.mixer.samples import RowRandom

    for method, args in (("random", ()), ("randint", (0, 99)), ("choice", ("abcdef",)), ("gauss", (0, 1)),
                         ("sample", (range(100), 5)), ("uniform", (0, 1))):
        assert getattr(RowRandom(11), method)(*args) == getattr(random.Random(11), method)(*args), method


def reference_samples(tokenizer, inputs, outputs):
    """src/tgt built the obvious way, one sample at a time (the seed's formulation)."""
    src, tgt = [], []
    for prompt, output in zip(inputs, outputs):
        p, o = tokenizer.encode(prompt), tokenizer.encode(output)
        src += [tokenizer.bos_id, *p, *o]
        tgt += [IGNORE_INDEX] * len(p) + o + [tokenizer.eos_id]
    return src, tgt


def test_hf_flat_and_deferred_encodings_equal_encode_and_the_reference(tmp_path):
    """The hf tokenizer's array paths (what the stream uses) give exactly ``encode``'s ids, and the
    vectorized sample assembly equals the one-sample-at-a-time reference, empty texts included."""
    import random

    from mixer_helpers import WORDS, build_tokenizer
    from fm9g.mixer.samples import encode_deferred, encode_flat, interleave

    hf = load_tokenizer(f"hf:{build_tokenizer(tmp_path / 'tok')}")
    rng = random.Random(5)
    inputs = ["" if i % 4 == 0 else " ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for i in range(40)]
    outputs = ["" if i % 7 == 0 else "<|im_start|>" + " ".join(rng.choices(WORDS, k=rng.randint(1, 60))) for i in range(40)]
    texts = interleave(inputs, outputs)
    expected = [hf.encode(text) for text in texts]
    for ids_, lengths in (hf.encode_batch_flat(texts), encode_flat(hf, texts), encode_deferred(hf, texts)(),
                          encode_deferred(BYTE, texts)()):
        assert ids_.dtype == np.int32 and lengths.dtype == np.int64
    flat_ids, lengths = encode_deferred(hf, texts)()
    assert lengths.tolist() == [len(e) for e in expected]
    assert flat_ids.tolist() == [token for e in expected for token in e]
    for tokenizer in (hf, BYTE):
        src, tgt, layout = tokenize_samples(tokenizer, inputs, outputs)
        assert (src.tolist(), tgt.tolist()) == reference_samples(tokenizer, inputs, outputs)
        assert layout[:, 1].tolist() == [len(tokenizer.encode(p)) for p in inputs]
    assert [len(a) for a in hf.encode_batch_flat([])] == [0, 0]
