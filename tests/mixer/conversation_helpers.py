"""Tiny Qwen2-style tokenizers with real chat templates, for the conversation tests (no downloads).

``QWEN2_TEMPLATE`` is Qwen2-Instruct's own chat template; ``QWEN2_GENERATION_TEMPLATE`` is the same
with ``{% generation %}`` around each assistant turn's content and ``<|im_end|>``, as transformers'
documentation writes it. The tokenizer is a byte-level BPE trained at test time with Qwen2's
pre-tokenizer regex and its special tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``).
"""

from __future__ import annotations

import json
from pathlib import Path

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN2_GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n\\n' + "
    "message['content'] | trim + '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n\\n' }}{% endif %}"
)
"""Llama 3's shape (BOS written by the template itself, no newline between turns), ChatML tokens."""
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris is the capital of France."}],
    [{"role": "system", "content": "You answer briefly."},
     {"role": "user", "content": "hello there"},
     {"role": "assistant", "content": "Hi! How can I help?"},
     {"role": "user", "content": "tell me about the quick brown fox"},
     {"role": "assistant", "content": "\n\n  It jumps over the lazy dog.  \n"},
     {"role": "user", "content": "数据 模型 训练?"},
     {"role": "assistant", "content": "你好 世界 — 数据混合。"}],
    [{"role": "user", "content": "call the tool"},
     {"role": "assistant", "content": ""},
     {"role": "tool", "content": "{\"result\": 42}"},
     {"role": "assistant", "content": " The answer is 42."}],
]
"""Multi-turn, system turn, whitespace at the edges of content, Chinese, an empty reply, a tool turn."""

TRAINING_TEXT = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "What is the capital of France? Paris is the capital of France.",
    "hello there Hi! How can I help? tell me about the quick brown fox It jumps over the lazy dog.",
    "数据 模型 训练 你好 世界 数据混合 The answer is 42. call the tool result",
] * 20


def qwen2_tokenizer_dir(directory: Path, *, chat_template: str | None = QWEN2_GENERATION_TEMPLATE,
                        bos_token: str | None = None) -> Path:
    """A Qwen2-style tokenizer directory (tokenizer.json + tokenizer_config.json with ``chat_template``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"bos_token": bos_token, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def transformers_tokenizer(directory: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(directory))
