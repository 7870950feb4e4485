"""Rendered conversations to training targets: per-token masks from assistant spans, turn cuts.

A transform renders a conversation into text plus the character spans of its assistant turns
(:data:`fm9g.core.protocols.TransformFn`); the chunk's texts are tokenized with character offsets
and here each token is marked trained when it overlaps a selected span — the rule transformers'
``apply_chat_template(return_assistant_tokens_mask=True)`` applies to the same offsets, so the
masks are the same. In fm9g's pre-shifted layout ``tgt[i]`` is the token after ``src[i]``, so a
trained token ``j`` of the body (``src[1 + j]``) trains ``tgt[j]``; the EOS target that ends every
sample is trained per the conversation's ``train_eos`` (or ``train: all``).
"""

from __future__ import annotations

import numpy as np

CUT, TOO_LONG = "cut", "too_long"


def drop_rendered_bos(tokens: tuple[np.ndarray, ...], conversations: dict[int, dict],
                      bos_id: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """``(ids, lengths)`` and the tokens' character offsets, without the first token of each
    conversation whose template itself begins with BOS (Llama 3's ``<|begin_of_text|>``): every
    sample already starts with one, so the sample begins exactly as the template's text does."""
    ids, lengths, character_offsets = tokens
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    first = [int(starts[2 * k + 1]) for k in sorted(conversations)
             if lengths[2 * k + 1] > 0 and ids[starts[2 * k + 1]] == bos_id]
    if not first:
        return (ids, lengths), character_offsets
    lengths = lengths.copy()
    lengths[[2 * k + 1 for k in sorted(conversations)
             if lengths[2 * k + 1] > 0 and ids[starts[2 * k + 1]] == bos_id]] -= 1
    return (np.delete(ids, first), lengths), np.delete(character_offsets, first, axis=0)


def trained_tokens(character_offsets: np.ndarray, conversation: dict, turns: list) -> np.ndarray:
    """Which body tokens are trained: those overlapping a selected assistant span."""
    count = len(character_offsets)
    strategy = conversation.get("train", "assistant")
    if strategy == "all":
        return np.ones(count, dtype=bool)
    if strategy == "last":
        turns = turns[-1:]
    trained = np.zeros(count, dtype=bool)
    starts, ends = character_offsets[:, 0], character_offsets[:, 1]
    for start, end, weight in turns:
        if weight:
            trained |= (ends > start) & (starts < end)
    return trained


def mask_conversations(conversations: dict[int, dict], character_offsets: np.ndarray, text_lengths: np.ndarray,
                       src: np.ndarray, tgt: np.ndarray, sample_offsets: np.ndarray, kept: np.ndarray,
                       active: np.ndarray, *, max_length: int, cut_at_turns: bool, eos_id: int,
                       ignore_index: int) -> dict[int, str]:
    """Mask the targets of each active conversation sample in place (``tgt`` holds the unmasked
    shifted body and EOS) and, with ``cut_at_turns``, cut a too-long one at a turn end (``kept``
    shortened, its last target EOS again). Returns the samples that were cut or cannot be."""
    outcomes: dict[int, str] = {}
    token_starts = np.concatenate(([0], np.cumsum(text_lengths)))
    for k, conversation in conversations.items():
        if not active[k]:
            continue
        body = int(text_lengths[2 * k + 1])
        offsets = character_offsets[token_starts[2 * k + 1]: token_starts[2 * k + 2]]
        turns = conversation.get("turns", [])
        keep = body
        if cut_at_turns and 1 + body > max_length:
            fitting = [(number, int(np.searchsorted(offsets[:, 0], end, side="left")))
                       for number, (_, end, _) in enumerate(turns)]
            fitting = [(number, count) for number, count in fitting if 1 + count <= max_length and count > 0]
            if not fitting:
                outcomes[k] = TOO_LONG
                continue
            last_turn, keep = fitting[-1]
            turns = turns[: last_turn + 1]
            outcomes[k] = CUT
        trained = trained_tokens(offsets[:keep], conversation, turns)
        begin = int(sample_offsets[k])
        view = tgt[begin: begin + keep + 1]
        view[:keep] = np.where(trained, src[begin + 1: begin + 1 + keep], ignore_index)
        eos_trained = conversation.get("train", "assistant") == "all" or (
            bool(conversation.get("train_eos")) and keep > 0 and bool(trained[-1]))
        view[keep] = eos_id if eos_trained else ignore_index
        kept[k] = keep + 1
    return outcomes
