"""Conversations through the mixer: masks equal transformers' assistant masks for real templates,
strategies and weights, turn cuts, BOS handling, and failures that are counted instead of trained."""

from __future__ import annotations

import numpy as np
import pytest

from fm9g.mixer.samples import IGNORE_INDEX, STATUS_NAMES, build_chunk
from fm9g.mixer.transforms import TransformRef, bind_transform
from fm9g.tokenizers import load_tokenizer

from conversation_helpers import (CONVERSATIONS, LLAMA3_STYLE_TEMPLATE, QWEN2_GENERATION_TEMPLATE, QWEN2_TEMPLATE,
                                  qwen2_tokenizer_dir, transformers_tokenizer)


@pytest.fixture(scope="module")
def tagged_dir(tmp_path_factory):
    return qwen2_tokenizer_dir(tmp_path_factory.mktemp("qwen2-tagged"), chat_template=QWEN2_GENERATION_TEMPLATE)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    return qwen2_tokenizer_dir(tmp_path_factory.mktemp("qwen2-plain"), chat_template=QWEN2_TEMPLATE)


def samples(records, directory, *, options=None, max_length=4096, oversize_rule="segment", name="chat_template"):
    """Each record's (status, src, tgt) as the mixer builds it with this tokenizer and transform."""
    tokenizer = load_tokenizer(f"hf:{directory}")
    options = {"tokenizer": f"hf:{directory}", **(options or {})} if name == "chat_template" else (options or {})
    transform = bind_transform(TransformRef(name, options), trust_scripts=False)
    chunk = build_chunk(records, np.arange(len(records)), epoch=0, start=0, nlines=len(records), transform=transform,
                        tokenizer=tokenizer, max_length=max_length, oversize_rule=oversize_rule, base_key=5)
    result = []
    for k in range(len(records)):
        begin, kept = int(chunk.offsets[k]), int(chunk.kept[k])
        result.append((STATUS_NAMES[chunk.status[k]], chunk.src[begin:begin + kept].tolist(),
                       chunk.tgt[begin:begin + kept].tolist(), chunk.errors.get(k)))
    return tokenizer, result


def transformers_masks(directory, conversation):
    out = transformers_tokenizer(directory).apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.mark.parametrize("template", ["tagged", "plain"])
def test_masks_equal_transformers_assistant_masks(template, tagged_dir, plain_dir) -> None:
    """Both the tagged template (generation spans) and Qwen2's own untagged one (turn-by-turn
    rendering) give the ids transformers' apply_chat_template gives, after BOS, and train exactly
    the targets of the tokens transformers marks as assistant tokens with the tagged template."""
    directory = tagged_dir if template == "tagged" else plain_dir
    tokenizer, built = samples([{"messages": c} for c in CONVERSATIONS], directory)
    for conversation, (status, src, tgt, _) in zip(CONVERSATIONS, built):
        ids, mask = transformers_masks(tagged_dir, conversation)
        assert status == "ok" and sum(mask) > 0
        assert src == [tokenizer.bos_id, *ids]
        # pre-shifted: src[i] predicts tgt[i], the token after it, trained where transformers' mask is 1
        assert tgt[:-1] == [token if m else IGNORE_INDEX for token, m in zip(ids, mask)]
        trained = [target != IGNORE_INDEX for target in tgt]
        assert trained[-1] is False  # the EOS target after the template's trailing newline is not trained


def test_masks_of_an_untagged_template_need_turn_by_turn_rendering(plain_dir) -> None:
    """Qwen2's own template has no generation tags; transformers refuses to mask with it, fm9g finds
    the turns. A template that rewrites earlier turns is refused with a message to add tags."""
    rewriting = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "('' if loop.last else ' (earlier)') + '<|im_end|>\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    _, [(status, _, _, error)] = samples([{"messages": CONVERSATIONS[1]}], plain_dir, options={"template": rewriting})
    assert status == "transform_error" and "generation" in error and "turn by turn" in error


def test_strategies_and_weights(tagged_dir) -> None:
    conversation = CONVERSATIONS[1]
    tokenizer, [(_, src, every, _)] = samples([{"messages": conversation}], tagged_dir)
    _, [(_, _, last, _)] = samples([{"messages": conversation}], tagged_dir, options={"train": "last"})
    _, [(_, _, everything, _)] = samples([{"messages": conversation}], tagged_dir, options={"train": "all"})
    weighted = [dict(m, weight=0) if m["content"].startswith("Hi!") else m for m in conversation]
    _, [(_, _, without_first, _)] = samples([{"messages": weighted}], tagged_dir)

    def text(tgt):
        return tokenizer.decode([t for t in tgt if t != IGNORE_INDEX])

    assert text(every) == "Hi! How can I help?\n\n  It jumps over the lazy dog.  \n你好 世界 — 数据混合。"
    assert text(last) == "你好 世界 — 数据混合。"
    assert text(without_first) == "\n\n  It jumps over the lazy dog.  \n你好 世界 — 数据混合。"
    assert everything == src[1:] + [tokenizer.eos_id]
    all_zero = [dict(m, weight=0) if m["role"] == "assistant" else m for m in conversation]
    _, [(status, _, _, _)] = samples([{"messages": all_zero}], tagged_dir)
    assert status == "no_trained_tokens"


def test_turns_cut_keeps_the_system_turn_and_whole_turns(tagged_dir) -> None:
    """A conversation too long for max_length is cut after its last assistant turn that fits: the
    sample equals the shorter conversation rendered alone (system turn first, EOS last)."""
    conversation = CONVERSATIONS[1]
    _, [(_, full, _, _)] = samples([{"messages": conversation}], tagged_dir)
    _, [(_, two_turns, two_tgt, _)] = samples([{"messages": conversation[:5]}], tagged_dir)
    for max_length in (len(two_turns), len(full) - 2):
        _, [(status, src, tgt, _)] = samples([{"messages": conversation}], tagged_dir, max_length=max_length,
                                             oversize_rule="turns")
        assert status == "truncated" and len(src) <= max_length
        cut = len(two_turns) - 1  # the shorter conversation ends with a newline the cut leaves out
        assert src == two_turns[:cut] and tgt[:-1] == two_tgt[:cut - 1]
    _, [(status, _, _, _)] = samples([{"messages": conversation}], tagged_dir, max_length=20, oversize_rule="turns")
    assert status == "too_long"
    _, [(status, _, _, _)] = samples([{"input": "x" * 200, "output": "y"}], tagged_dir, max_length=20,
                                     oversize_rule="turns", name="chatml")
    assert status == "input_too_long"


def test_head_losing_every_trained_token_drops_the_sample(tagged_dir) -> None:
    conversation = CONVERSATIONS[1]
    _, [(status, src, _, _)] = samples([{"messages": conversation}], tagged_dir, max_length=40, oversize_rule="head",
                                       options={"train": "last"})
    assert status == "no_trained_tokens" and src == []
    _, [(status, src, tgt, _)] = samples([{"messages": conversation}], tagged_dir, max_length=40, oversize_rule="head")
    assert status == "truncated" and len(src) == 40 and any(t != IGNORE_INDEX for t in tgt)


def test_a_template_that_writes_bos_gets_one_bos(tmp_path) -> None:
    directory = qwen2_tokenizer_dir(tmp_path / "tok", chat_template=LLAMA3_STYLE_TEMPLATE, bos_token="<|endoftext|>")
    tokenizer, [(status, src, tgt, _)] = samples([{"messages": CONVERSATIONS[0]}], directory)
    ids = transformers_tokenizer(directory).apply_chat_template(CONVERSATIONS[0], tokenize=True, return_dict=True)
    assert status == "ok" and src == list(ids["input_ids"]) and src.count(tokenizer.bos_id) == 1
    assert tokenizer.decode([t for t in tgt if t != IGNORE_INDEX]) == "Paris is the capital of France."


def test_chatml_and_fm9g_learn_multi_turn() -> None:
    tokenizer = load_tokenizer("byte")
    conversation = CONVERSATIONS[1][1:5]
    for name, trained in (("chatml", "Hi! How can I help?<|im_end|>\n\n  It jumps over the lazy dog.  \n<|im_end|>"),
                          ("fm9g", "Hi! How can I help?\n\n  It jumps over the lazy dog.  \n")):
        transform = bind_transform(TransformRef(name, {}), trust_scripts=False)
        chunk = build_chunk([{"messages": conversation}], np.arange(1), epoch=0, start=0, nlines=1, transform=transform,
                            tokenizer=tokenizer, max_length=4096, oversize_rule="segment", base_key=0)
        assert tokenizer.decode([t for t in chunk.tgt.tolist() if t != IGNORE_INDEX]) == trained
        assert chunk.tgt[-1] == tokenizer.eos_id  # the EOS after the last reply is trained, as for one turn


def test_one_turn_conversation_renders_the_seed_chatml_text() -> None:
    tokenizer = load_tokenizer("byte")
    transform = bind_transform(TransformRef("chatml", {"system": "be \"kind\" 中文"}), trust_scripts=False)
    records = [{"input": "q?", "output": "a!"},
               {"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a!"}]}]
    chunk = build_chunk(records, np.arange(2), epoch=0, start=0, nlines=2, transform=transform, tokenizer=tokenizer,
                        max_length=4096, oversize_rule="segment", base_key=0)
    first, second = (slice(int(chunk.offsets[k]), int(chunk.offsets[k] + chunk.kept[k])) for k in range(2))
    assert chunk.src[first].tolist() == chunk.src[second].tolist()
    assert chunk.tgt[first].tolist() == chunk.tgt[second].tolist()


def test_a_chunk_mixing_both_forms_keeps_single_turn_samples_unchanged(tagged_dir) -> None:
    single = [{"input": "hello there", "output": "Hi! How can I help?"}, {"input": "", "output": "the quick fox"}]
    _, alone = samples(single, tagged_dir, name="chatml")
    _, mixed = samples([single[0], {"messages": CONVERSATIONS[0]}, single[1]], tagged_dir, name="chatml")
    assert [mixed[0], mixed[2]] == alone and mixed[1][0] == "ok"


def test_messages_without_a_rendering_transform_fail_loudly(tagged_dir) -> None:
    _, [(status, _, _, error)] = samples([{"messages": CONVERSATIONS[0]}], tagged_dir, name="identity")
    assert status == "transform_error" and "chat_template, chatml or fm9g" in error


def test_chat_template_needs_a_template(tmp_path) -> None:
    from fm9g.core.errors import Fm9gError

    directory = qwen2_tokenizer_dir(tmp_path / "bare", chat_template=None)
    with pytest.raises(Fm9gError, match="has no chat template"):
        bind_transform(TransformRef("chat_template", {"tokenizer": f"hf:{directory}"}), trust_scripts=False)
