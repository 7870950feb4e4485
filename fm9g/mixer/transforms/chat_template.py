"""The ``chat_template`` transform: a Hugging Face tokenizer's own Jinja chat template.

Option ``tokenizer`` names the tokenizer directory (``hf:DIR`` or ``DIR``, normally the mix's own
tokenizer) whose template is used: ``chat_template.jinja``, else ``tokenizer_config.json``'s
``chat_template`` (a named list: its ``default`` entry). The template is rendered with the
directory's special-token strings (``bos_token``, ``eos_token``, ...) like ``apply_chat_template``;
option ``template`` gives a template inline instead. Masks: see
:mod:`fm9g.mixer.transforms.rendering` (``{% generation %}`` blocks, or turn-by-turn rendering).

The EOS target that ends every fm9g sample is not trained here: the template's own end-of-turn
token (``<|im_end|>``, ``<|eot_id|>``) is what the model learns to stop with, as with transformers'
assistant masks. Single-turn records are rendered as one user and one assistant turn.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import fm9g
from fm9g.core.errors import Fm9gError
from fm9g.core.protocols import Record, TransformFn
from fm9g.mixer.transforms.rendering import STRATEGY_OPTION, ChatTemplate, render_conversation

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def tokenizer_directory(spec: str) -> Path:
    """The directory an ``hf:DIR`` / ``hf:DIR/tokenizer.json`` / ``DIR`` spec names."""
    path = Path(spec[3:] if spec.startswith("hf:") else spec).expanduser()
    return path.parent if path.is_file() else path


def read_chat_template(spec: str, *, inline: str | None = None, where: str = "chat_template") -> ChatTemplate:
    """The chat template of a tokenizer directory (or ``inline``), with the directory's special-token strings."""
    directory = tokenizer_directory(spec)
    config_file = directory / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise Fm9gError(f"invalid JSON: {error}", where=str(config_file)) from None
    elif inline is None:
        raise Fm9gError(f"no tokenizer_config.json in {directory}", where=where,
                        fix="point the option at a Hugging Face tokenizer directory (save_pretrained output)")
    specials = {}
    for name in SPECIAL_NAMES:
        value = config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            specials[name] = value
    source = inline
    if source is None and (directory / "chat_template.jinja").is_file():
        source = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    elif source is None and isinstance(config.get("chat_template"), str):
        source = config["chat_template"]
    elif source is None and isinstance(config.get("chat_template"), list):
        named = {entry.get("name"): entry.get("template") for entry in config["chat_template"] if isinstance(entry, dict)}
        source = named.get("default")
    if not isinstance(source, str) or not source.strip():
        raise Fm9gError(f"the tokenizer in {directory} has no chat template", where=where,
                        fix="use a tokenizer directory whose tokenizer_config.json has a chat_template (or that holds "
                            "chat_template.jinja), give one inline with the option 'template', or use the chatml or "
                            "fm9g transform")
    return ChatTemplate(source, specials)


class ChatTemplateTransform:
    name = "chat_template"
    description = "render conversations with a Hugging Face tokenizer's Jinja chat template; assistant turns trained"
    options_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "tokenizer": {"type": "string", "minLength": 1,
                          "description": "hf:DIR (or DIR): the tokenizer whose chat template renders the records"},
            "template": {"type": "string", "minLength": 1,
                         "description": "a Jinja chat template to use instead of the tokenizer's (its special "
                                        "tokens still come from the tokenizer)"},
            "train": STRATEGY_OPTION,
        },
        "required": ["tokenizer"],
        "additionalProperties": False,
    }

    def bind(self, options: dict[str, Any]) -> TransformFn:
        template = self.template(options)
        train = options.get("train", "assistant")

        def chat_template(record: Record, num_sample: int, rng: random.Random) -> Record:
            return render_conversation(template, record, train=train, train_eos=False)

        return chat_template

    @staticmethod
    def template(options: dict[str, Any]) -> ChatTemplate:
        """The template these options render with (also what an export writes)."""
        return read_chat_template(options["tokenizer"], inline=options.get("template"),
                                  where="transform chat_template: option 'tokenizer'")


@fm9g.hookimpl
def register_transforms(register):
    register(ChatTemplateTransform())
