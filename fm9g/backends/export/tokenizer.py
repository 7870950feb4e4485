"""Tokenizer files for an exported Hugging Face directory (``fm9g export`` and ``fm9g convert``).

``byte`` becomes a ``tokenizer.json`` giving exactly fm9g's byte tokenizer ids; ``hf:DIR`` copies
DIR's tokenizer files; ``sp:FILE.model`` writes the model plus the ``tokenizer.json`` transformers
converts it to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fm9g.core.errors import Fm9gError

TOKENIZER_PATTERNS = (
    "tokenizer*.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "chat_template*", "*.tiktoken", "spiece.model", "sentencepiece*.model",
)
"""Files copied from an ``hf:`` tokenizer directory (never weights or shard indexes)."""


def byte_tokenizer_fast():
    """A ``PreTrainedTokenizerFast`` giving exactly fm9g's byte tokenizer ids (byte + 4; 0-3 specials).

    A BPE model without merges over GPT-2's 256 byte-level symbols; special-token strings in text
    are encoded as bytes (``split_special_tokens``), as the byte tokenizer does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from fm9g.tokenizers.byte import OFFSET, SPECIALS

    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    remapped = iter(range(256, 512))
    symbols = {byte: chr(byte) if byte in printable else chr(next(remapped)) for byte in range(256)}
    vocab = {special: index for index, special in enumerate(SPECIALS)}
    vocab.update({symbol: byte + OFFSET for byte, symbol in symbols.items()})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(special, special=True, normalized=False) for special in SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        split_special_tokens=True, model_max_length=1 << 30, clean_up_tokenization_spaces=False,
    )


def _sentencepiece_tokenizer(model_file: Path, out: Path) -> None:
    """``tokenizer.model`` (the file itself) plus the ``tokenizer.json`` transformers converts it to."""
    import sentencepiece
    from transformers import AutoTokenizer

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    shutil.copy2(model_file, out / "tokenizer.model")
    specials = {f"{role}_token": processor.id_to_piece(index) for role, index in (
        ("bos", processor.bos_id()), ("eos", processor.eos_id()), ("unk", processor.unk_id()),
        ("pad", processor.pad_id())) if index >= 0}
    (out / "tokenizer_config.json").write_text(
        json.dumps({**specials, "add_bos_token": False, "add_eos_token": False}, indent=2) + "\n", encoding="utf-8")
    AutoTokenizer.from_pretrained(out, trust_remote_code=False).save_pretrained(out)


def training_chat_template(manifest_path: Path | None):
    """The chat template the run's conversations were rendered with: the first dataset of the mix
    manifest whose transform renders conversations (``chat_template``, ``chatml``, ``fm9g``: a
    transform plugin with a ``template(options)`` method); ``None`` when none does."""
    if manifest_path is None:
        return None
    from fm9g.core.plugins import get_plugin, validate_options
    from fm9g.mixer.manifest import load_manifest

    for dataset in load_manifest(manifest_path, check_paths=False).datasets:
        ref = dataset.transform
        if ref.script is not None or ref.name is None:
            continue
        plugin = get_plugin("transform", ref.name, where=f"{manifest_path}: {dataset.where}")
        template = getattr(plugin, "template", None)
        if callable(template):
            return template(validate_options(plugin, ref.options, where=f"{manifest_path}: {dataset.where}"))
    return None


def write_tokenizer(spec: str | None, out: Path, *, fallback_dir: Path | None = None,
                    chat_template=None) -> tuple[str, dict | None]:
    """Write tokenizer files for ``spec`` into ``out``; return a note and its special ids (or None).

    ``byte``: a ``tokenizer.json`` reproducing the byte tokenizer; ``hf:DIR``: DIR's tokenizer files
    copied verbatim; ``sp:FILE.model``: the model as ``tokenizer.model`` plus its converted
    ``tokenizer.json``; None: the base model directory's tokenizer files when it has some, else
    nothing (said in the note). Exact ids: load with ``PreTrainedTokenizerFast.from_pretrained`` —
    transformers 5's ``AutoTokenizer`` swaps in ``Qwen2Tokenizer`` (NFC-normalizing) for qwen2 dirs."""
    from fm9g.tokenizers import split_spec

    if spec is None:
        if fallback_dir is not None and _tokenizer_files(fallback_dir):
            spec = f"hf:{fallback_dir}"
        else:
            return "no tokenizer written (the checkpoint names none; pass --tokenizer SPEC)", None
    name, argument = split_spec(spec)
    source = Path(argument or "")
    if name == "byte":
        byte_tokenizer_fast().save_pretrained(out)
        note = "tokenizer: byte (tokenizer.json reproducing fm9g's byte tokenizer ids)"
    elif name == "hf":
        files = [source] if source.is_file() else _tokenizer_files(source)
        if not files:
            raise Fm9gError(f"no tokenizer files in {source}", where=f"tokenizer spec '{spec}'",
                            fix="point hf: at a directory holding tokenizer.json / tokenizer_config.json")
        for path in files:
            shutil.copy2(path, out / path.name)
        note = f"tokenizer: copied {', '.join(path.name for path in files)} from {source}"
    elif name == "sp":
        if not source.is_file():
            raise Fm9gError("sentencepiece model not found", where=f"tokenizer spec '{spec}'", fix="check the path")
        _sentencepiece_tokenizer(source, out)
        note = f"tokenizer: sentencepiece {source} as tokenizer.model + tokenizer.json"
    else:
        raise Fm9gError(f"cannot export tokenizer spec '{spec}'", where="tokenizer",
                        fix="use byte, hf:DIR or sp:FILE.model, or copy the tokenizer files by hand")
    _begin_with_bos(spec, out)
    template_note = _carry_chat_template(spec, out, chat_template)
    return note + (f"; {template_note}" if template_note else ""), _special_ids(out)


def _carry_chat_template(spec: str, out: Path, chat_template) -> str:
    """Give the exported tokenizer the chat template training rendered with (else keep its own)
    and make it begin with BOS as every training sample does, so ``apply_chat_template(messages,
    tokenize=True)`` (which adds no special tokens itself) gives the training prompt's ids.

    The byte tokenizer encodes special-token strings as bytes, so its template cannot write BOS:
    there ``tokenizer(apply_chat_template(messages, tokenize=False))`` adds it (the post-processor)."""
    from tokenizers import Tokenizer

    from fm9g.tokenizers import load_tokenizer

    config_path = out / "tokenizer_config.json"
    if not config_path.is_file():
        return ""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    jinja_file = out / "chat_template.jinja"
    source = chat_template.source if chat_template is not None else (
        jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else config.get("chat_template"))
    if not isinstance(source, str):
        return ""
    name = spec.partition(":")[0]
    note = "chat template of the training transform" if chat_template is not None else "the tokenizer's chat template"
    if name != "byte" and (out / "tokenizer.json").is_file():
        bos = Tokenizer.from_file(str(out / "tokenizer.json")).id_to_token(load_tokenizer(spec).bos_id)
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        from fm9g.mixer.transforms.rendering import ChatTemplate

        specials = {**(chat_template.specials if chat_template is not None else {}), "bos_token": bos}
        if not ChatTemplate(source, specials).render_text(probe).startswith(bos):
            source = "{{- bos_token }}" + source
            note += ", beginning with BOS"
        config["bos_token"] = bos
    config["chat_template"] = source
    jinja_file.unlink(missing_ok=True)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return note


def _begin_with_bos(spec: str, out: Path) -> None:
    """Make the exported tokenizer put BOS first, as every training sample begins: without it, a
    prompt encoded for generation starts differently from anything the model was trained on.

    A tokenizer that already adds it is left alone; otherwise ``tokenizer.json`` gets a template
    post-processor after its own, and ``add_bos_token`` (which transformers' Llama-style fast
    tokenizers rebuild their post-processor from) is set in ``tokenizer_config.json``."""
    from tokenizers import Tokenizer, processors

    from fm9g.tokenizers import load_tokenizer

    bos_id = load_tokenizer(spec).bos_id
    path = out / "tokenizer.json"
    if not path.is_file():
        return
    tokenizer = Tokenizer.from_file(str(path))
    if tokenizer.encode("a").ids[:1] == [bos_id]:
        return
    bos = tokenizer.id_to_token(bos_id)
    template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, bos_id)])
    existing = tokenizer.post_processor
    tokenizer.post_processor = processors.Sequence([existing, template]) if existing is not None else template
    tokenizer.save(str(path))
    config_path = out / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if "add_bos_token" in config:
            config["add_bos_token"] = True
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _tokenizer_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = {path for pattern in TOKENIZER_PATTERNS for path in directory.glob(pattern) if path.is_file()}
    return sorted(path for path in found if not path.name.endswith(".index.json"))


def _special_ids(out: Path) -> dict | None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    except (OSError, ValueError, TypeError):
        return None
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
