"""Records to training samples, built a chunk of rows at a time.

For each record: apply the transform, then ``src = [bos] + enc(input) + enc(output)`` and
``tgt = [-100] * len(enc(input)) + enc(output) + [eos]`` — the seed's pre-shifted targets, so
``src[i]`` predicts ``tgt[i]`` and no shift happens at loss time. Equivalently ``tgt`` is ``src``
moved left by one with ``eos`` appended and the prompt masked, which is how it is computed here,
for a whole chunk at once with numpy.

A prompt of ``>= max_length - 2`` tokens drops the sample. A longer sample follows the dataset's
``oversize_rule``: ``drop``, ``head`` (keep the first ``max_length`` tokens) or ``segment``
(consecutive ``max_length`` windows, each packed as its own sample). Every drop or cut is counted
by reason. A sample is a pure function of (dataset row, epoch, seed, transform, tokenizer): that is
what lets tokenization run ahead, in any number of workers, without changing the stream.

A transform that raises or returns something other than input/output strings marks its sample
(the stream decides whether that stops the run, see ``max_transform_errors``). Text that is not
valid Unicode (a lone surrogate, which no tokenizer can encode) is skipped and counted as
``invalid_utf8``, the reason ``fm9g index`` gives a line it cannot read as UTF-8. A finished chunk
keeps only the tokens it will pack, so a dropped or cut huge row frees its tokens at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from fm9g.core.errors import Fm9gError
from fm9g.core.protocols import Record, Tokenizer, TransformFn
from fm9g.mixer.conversations import CUT, drop_rendered_bos, mask_conversations

IGNORE_INDEX = -100

(OK, SEGMENTED, TRUNCATED, INPUT_TOO_LONG, TOO_LONG, TRANSFORM_ERROR, BAD_TRANSFORM_OUTPUT, INVALID_UTF8,
 NO_TRAINED_TOKENS) = range(9)
STATUS_NAMES = (
    "ok",
    "segmented",
    "truncated",
    "input_too_long",
    "too_long",
    "transform_error",
    "bad_transform_output",
    "invalid_utf8",
    "no_trained_tokens",
)
"""Per-sample outcome; the names are the reasons counted in reports and stream state. A
conversation cut at a turn boundary (``oversize_rule`` ``turns``) counts as ``truncated``."""
DROPPED = frozenset({INPUT_TOO_LONG, TOO_LONG, TRANSFORM_ERROR, BAD_TRANSFORM_OUTPUT, INVALID_UTF8,
                     NO_TRAINED_TOKENS})
TRANSFORM_FAILED = frozenset({TRANSFORM_ERROR, BAD_TRANSFORM_OUTPUT})
"""The statuses ``max_transform_errors`` allows; beyond it the stream stops with an error."""


def sample_seed(base_key: int, row: int) -> int:
    """Seed of the ``random.Random`` handed to a transform for one row of one epoch."""
    return (base_key ^ ((row + 1) * 0x9E3779B97F4A7C15)) & ((1 << 64) - 1)


class RowRandom(random.Random):
    """A ``random.Random`` seeded with ``seed`` on first use: most transforms never draw a number,
    and seeding the Mersenne Twister costs more than the rest of a typical transform."""

    def __init__(self, seed: int):
        self._pending_seed: int | None = seed
        self.gauss_next = None

    def _seed_now(self) -> None:
        if self._pending_seed is not None:
            super().seed(self._pending_seed)
            self._pending_seed = None

    def random(self) -> float:
        self._seed_now()
        return super().random()

    def getrandbits(self, k: int) -> int:
        self._seed_now()
        return super().getrandbits(k)

    def getstate(self):
        self._seed_now()
        return super().getstate()

    def seed(self, a=None, version=2) -> None:
        self._pending_seed = None
        super().seed(a, version)


@dataclass
class Chunk:
    """Consecutive positions ``start .. start+len(rows)`` of one dataset's epoch, tokenized.

    ``src``/``tgt`` hold every sample back to back; sample ``k`` occupies
    ``offsets[k] : offsets[k] + kept[k]`` (``kept`` is 0 for dropped samples and ``max_length`` for
    ``head``-truncated ones); ``status[k]`` is an index into :data:`STATUS_NAMES`; ``errors[k]`` says
    why sample ``k``'s transform failed or its text was skipped.
    """

    epoch: int
    start: int
    rows: np.ndarray
    src: np.ndarray
    tgt: np.ndarray
    offsets: np.ndarray
    kept: np.ndarray
    status: np.ndarray
    errors: dict[int, str]

    def __len__(self) -> int:
        return len(self.rows)


def _not_unicode(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate: a ``str`` that has no UTF-8 form, so no tokenizer
    can encode it (ASCII, the common case, is answered without looking at the characters)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _output_problem(result: object) -> str | None:
    """What is wrong with a transform's return value, or ``None`` when it has string input/output
    (or is a well-formed rendered conversation)."""
    if not isinstance(result, dict):
        return f"returned {type(result).__name__}, not a dict with string 'input' and 'output'"
    if "text" in result:
        return conversation_problem(result)
    if "messages" in result:
        return ("returned a messages record, which it must render: name a transform that renders conversations "
                "(chat_template, chatml or fm9g)")
    for key in ("input", "output"):
        value = result.get(key, "")
        if not isinstance(value, str):
            return f"returned a dict whose '{key}' is {type(value).__name__}, not a string"
    return None


def conversation_problem(result: dict) -> str | None:
    """What is wrong with a rendered conversation (see :data:`fm9g.core.protocols.TransformFn`)."""
    text, turns = result.get("text"), result.get("turns", [])
    if not isinstance(text, str):
        return f"returned a conversation whose 'text' is {type(text).__name__}, not a string"
    if result.get("train", "assistant") not in ("assistant", "last", "all"):
        return f"returned a conversation whose 'train' is {result.get('train')!r} (assistant, last or all)"
    if not isinstance(result.get("train_eos", False), bool):
        return "returned a conversation whose 'train_eos' is not a boolean"
    if not isinstance(turns, list):
        return f"returned a conversation whose 'turns' is {type(turns).__name__}, not a list"
    end = 0
    for turn in turns:
        if (not isinstance(turn, (list, tuple)) or len(turn) != 3 or not all(type(v) is int for v in turn)
                or not end <= turn[0] <= turn[1] <= len(text) or turn[2] not in (0, 1)):
            return (f"returned a conversation turn {turn!r}: turns must be [start, end, weight 0/1] character "
                    "spans of the text, in order")
        end = turn[1]
    return None


def apply_transform(
    transform: TransformFn, records: Sequence[Record], rows: np.ndarray, first_sample: int, base_key: int,
    conversations: dict[int, dict] | None = None,
) -> tuple[list[str], list[str], np.ndarray, dict[int, str]]:
    """Run the transform over a chunk of records; failures become statuses (and ``errors[k]``), not
    exceptions: whether a failure stops the run is the stream's decision, made when the sample is
    consumed (a chunk built ahead may never be). A rendered conversation's text goes in the output
    slot (with an empty input) and the conversation itself into ``conversations[k]``."""
    inputs: list[str] = []
    outputs: list[str] = []
    status = np.zeros(len(records), dtype=np.int8)
    errors: dict[int, str] = {}
    conversations = {} if conversations is None else conversations
    for k, (record, row) in enumerate(zip(records, rows.tolist())):
        try:
            result = transform(record, first_sample + k, RowRandom(sample_seed(base_key, row)))
        except Exception as error:  # noqa: BLE001 - user transform code; the stream reports it
            status[k], errors[k] = TRANSFORM_ERROR, f"{type(error).__name__}: {error}"
            result = None
        else:
            problem = _output_problem(result)
            if problem is not None:
                status[k], errors[k] = BAD_TRANSFORM_OUTPUT, problem
        if status[k]:
            inputs.append("")
            outputs.append("")
            continue
        if "text" in result:
            source, target = "", result["text"]
            conversations[k] = result
        else:
            source, target = result.get("input", ""), result.get("output", "")
        if _not_unicode(source) or _not_unicode(target):
            conversations.pop(k, None)
            status[k], errors[k] = INVALID_UTF8, "the transformed text holds a lone surrogate (not valid Unicode)"
            source = target = ""
        inputs.append(source)
        outputs.append(target)
    return inputs, outputs, status, errors


FlatTokens = tuple[np.ndarray, ...]
"""Every text's ids back to back (int32) and each text's token count (int64); for
:class:`TextsWithOffsets`, also each token's ``(start, end)`` character offsets (int64 ``[n, 2]``)."""


class TextsWithOffsets(list):
    """A chunk's texts (a ``list[str]``) that hold rendered conversations: their tokens' character
    offsets are needed to turn the conversations' assistant spans into masks."""


def encode_offsets(tokenizer: Tokenizer, texts: list[str]) -> FlatTokens:
    """``(ids, lengths, offsets)`` of ``texts`` through the tokenizer's ``encode_batch_offsets``."""
    with_offsets = getattr(tokenizer, "encode_batch_offsets", None)
    if not callable(with_offsets):
        raise Fm9gError(f"the tokenizer {tokenizer.spec} cannot give the character offsets of its tokens, which "
                        "conversations need for their assistant masks", where=f"tokenizer {tokenizer.spec}",
                        fix="mix conversations with an hf:DIR tokenizer (or byte)")
    return with_offsets(texts)


def encode_flat(tokenizer: Tokenizer, texts: list[str]) -> FlatTokens:
    """:data:`FlatTokens` of ``texts``, via the tokenizer's ``encode_batch_flat`` when it has one
    (the ``hf`` tokenizer: no flat Python list of ids), else ``encode_batch``."""
    if isinstance(texts, TextsWithOffsets):
        return encode_offsets(tokenizer, texts)
    flat = getattr(tokenizer, "encode_batch_flat", None)
    if callable(flat):
        return flat(texts)
    encoded = tokenizer.encode_batch(texts)
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return np.fromiter(chain.from_iterable(encoded), dtype=np.int32, count=int(lengths.sum())), lengths


def encode_deferred(tokenizer: Tokenizer, texts: list[str]) -> Callable[[], FlatTokens]:
    """Tokenize ``texts`` now and return a function giving their :data:`FlatTokens`.

    With a tokenizer that has ``encode_batch_deferred`` (``hf``), only the tokenization runs now,
    mostly outside the GIL; turning the ids into arrays (Python work) waits for the call, so a
    prefetch thread can tokenize the next chunk while the stream finishes this one."""
    deferred = getattr(tokenizer, "encode_batch_deferred", None)
    if callable(deferred) and not isinstance(texts, TextsWithOffsets):
        return deferred(texts)
    result = encode_flat(tokenizer, texts)
    return lambda: result


def interleave(inputs: list[str], outputs: list[str]) -> list[str]:
    """``[input 0, output 0, input 1, output 1, ...]``: the order whose flat ids are the samples' bodies."""
    texts: list[str] = [""] * (2 * len(inputs))
    texts[0::2] = inputs
    texts[1::2] = outputs
    return texts


def assemble_samples(tokens: FlatTokens, bos_id: int, eos_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``src``/``tgt`` of samples whose interleaved prompt/output ids are ``tokens``, and per sample
    ``(offset, prompt tokens, length)`` as an int64 array ``[count, 3]``: ``src`` is each body with
    ``bos`` inserted before it; ``tgt`` is ``src`` moved left by one, ``eos`` last, prompt masked."""
    body, text_lengths = tokens[0], tokens[1]
    count = len(text_lengths) // 2
    input_lengths, output_lengths = text_lengths[0::2], text_lengths[1::2]
    lengths = 1 + input_lengths + output_lengths
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    starts, ends = offsets[:-1], offsets[1:]
    src = np.insert(body, starts - np.arange(count, dtype=np.int64), np.int32(bos_id))
    tgt = np.empty(total, dtype=np.int32)
    tgt[:-1] = src[1:]
    tgt[ends - 1] = eos_id
    # +1 where a prompt starts, -1 where it ends: the running sum is 1 exactly on prompt tokens.
    # Each index set is unique, so plain fancy-index updates are exact.
    prompt_edges = np.zeros(total + 1, dtype=np.int32)
    prompt_edges[starts] += 1
    prompt_edges[starts + input_lengths] -= 1
    tgt[np.cumsum(prompt_edges[:-1]) > 0] = IGNORE_INDEX
    return src, tgt, np.stack([starts, input_lengths, lengths], axis=1)


def tokenize_samples(
    tokenizer: Tokenizer, inputs: list[str], outputs: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat ``src`` and ``tgt`` of all samples back to back, and per sample ``(offset, prompt tokens,
    length)`` as an int64 array ``[count, 3]``."""
    tokens = encode_flat(tokenizer, interleave(inputs, outputs))
    return assemble_samples(tokens, tokenizer.bos_id, tokenizer.eos_id)


@dataclass
class PreparedChunk:
    """A chunk before tokenization: its rows transformed into ``texts`` (see :func:`interleave`),
    with the transform's failures already in ``status``/``errors``."""

    epoch: int
    start: int
    rows: np.ndarray
    texts: list[str]
    status: np.ndarray
    errors: dict[int, str]
    conversations: dict[int, dict] = field(default_factory=dict)
    """Sample ``k``'s rendered conversation (its text is ``texts[2k + 1]``), for samples that are one."""


def prepare_chunk(
    records: Sequence[Record], rows: np.ndarray, *, epoch: int, start: int, nlines: int,
    transform: TransformFn, base_key: int,
) -> PreparedChunk:
    """Transform the records at consecutive positions ``start..`` of an epoch."""
    conversations: dict[int, dict] = {}
    inputs, outputs, status, errors = apply_transform(transform, records, rows, epoch * nlines + start, base_key,
                                                      conversations)
    texts = interleave(inputs, outputs)
    if conversations:
        texts = TextsWithOffsets(texts)
    return PreparedChunk(epoch, start, rows, texts, status, errors, conversations)


def finish_chunk(
    prepared: PreparedChunk, tokens: FlatTokens, tokenizer: Tokenizer, *, max_length: int, oversize_rule: str
) -> Chunk:
    """Lay out the tokenized samples and decide each one's fate (kept, cut, segmented or dropped).

    ``oversize_rule`` ``turns`` cuts a too-long conversation after its last assistant turn that
    fits (the system turn and every earlier turn kept) and drops one whose first assistant turn
    does not fit, or a single-turn sample, as ``too_long``."""
    conversations = prepared.conversations
    character_offsets = None
    if conversations:
        tokens, character_offsets = drop_rendered_bos(tokens, conversations, tokenizer.bos_id)
    src, tgt, layout = assemble_samples(tokens, tokenizer.bos_id, tokenizer.eos_id)
    offsets, input_lengths, lengths = layout[:, 0], layout[:, 1], layout[:, 2]
    status = prepared.status.copy()
    kept = lengths.copy()
    failed = status != OK
    too_long_prompt = ~failed & (input_lengths >= max_length - 2)
    status[too_long_prompt] = INPUT_TOO_LONG
    oversize = (status == OK) & (lengths > max_length)
    if conversations:
        outcomes = mask_conversations(conversations, character_offsets, tokens[1], src, tgt, offsets, kept,
                                      status == OK, max_length=max_length, cut_at_turns=oversize_rule == "turns",
                                      eos_id=tokenizer.eos_id, ignore_index=IGNORE_INDEX)
        for k, outcome in outcomes.items():
            status[k] = TRUNCATED if outcome == CUT else TOO_LONG
            oversize[k] = False
    if oversize_rule in ("drop", "turns"):
        status[oversize] = TOO_LONG
    elif oversize_rule == "head":
        status[oversize] = TRUNCATED
        kept[oversize] = max_length
    else:
        status[oversize] = SEGMENTED
    if conversations:
        untrained = [k for k in conversations if status[k] not in DROPPED
                     and not (tgt[offsets[k]: offsets[k] + kept[k]] != IGNORE_INDEX).any()]
        status[untrained] = NO_TRAINED_TOKENS
    kept[np.isin(status, list(DROPPED))] = 0
    src, tgt, offsets = _keep_only(src, tgt, offsets, kept, lengths)
    return Chunk(prepared.epoch, prepared.start, prepared.rows, src, tgt, offsets, kept, status, prepared.errors)


def _keep_only(src: np.ndarray, tgt: np.ndarray, offsets: np.ndarray, kept: np.ndarray,
               lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``src``/``tgt`` reduced to each sample's kept tokens, and the samples' new offsets.

    Packed pieces reference a chunk's arrays until their batch is packed, so without this a huge
    dropped row stayed in memory once per chunk it was in: a dataset of one 20 MB row and a few
    short ones, under ``drop``, held 80 MB more for every epoch a batch needed (gigabytes)."""
    if np.array_equal(kept, lengths):
        return src, tgt, offsets
    new_offsets = np.zeros(len(kept), dtype=np.int64)
    np.cumsum(kept[:-1], out=new_offsets[1:])
    index = np.arange(int(kept.sum()), dtype=np.int64) + np.repeat(offsets - new_offsets, kept)
    return src[index], tgt[index], new_offsets


def build_chunk(
    records: Sequence[Record],
    rows: np.ndarray,
    *,
    epoch: int,
    start: int,
    nlines: int,
    transform: TransformFn,
    tokenizer: Tokenizer,
    max_length: int,
    oversize_rule: str,
    base_key: int,
) -> Chunk:
    """Tokenize the records at consecutive positions ``start..`` of an epoch into a :class:`Chunk`
    (:func:`prepare_chunk`, tokenization, :func:`finish_chunk` in one go)."""
    prepared = prepare_chunk(records, rows, epoch=epoch, start=start, nlines=nlines, transform=transform,
                             base_key=base_key)
    return finish_chunk(prepared, encode_flat(tokenizer, prepared.texts), tokenizer,
                        max_length=max_length, oversize_rule=oversize_rule)


def windows(start: int, kept: int, max_length: int) -> list[tuple[int, int]]:
    """The ``[begin, end)`` pieces a kept sample is packed as: one, or ``max_length`` windows."""
    if kept <= max_length:
        return [(start, start + kept)] if kept > 0 else []
    return [(begin, min(begin + max_length, start + kept)) for begin in range(start, start + kept, max_length)]
