"""Conversations through the whole mixer: a manifest mixing a messages dataset (chat_template) and a
single-turn one packs both, and a packed batch of conversations gives each its loss as if alone."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from fm9g.backends.models.build import build_model
from fm9g.backends.training.loss import token_loss
from fm9g.mixer.samples import IGNORE_INDEX, build_chunk
from fm9g.mixer.stream import MixtureStream
from fm9g.mixer.transforms import TransformRef, bind_transform
from fm9g.tokenizers import load_tokenizer

from conversation_helpers import CONVERSATIONS, qwen2_tokenizer_dir
from mixer_helpers import write_manifest, write_seed_dataset


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("chatmix")
    directory = qwen2_tokenizer_dir(root / "tok")
    conversations = [{"messages": c} for c in CONVERSATIONS] * 4
    write_seed_dataset(root / "idx" / "chat", conversations)
    write_seed_dataset(root / "idx" / "qa", [{"input": f"question {n}?", "output": f"answer {n}."} for n in range(12)])
    options = {"tokenizer": f"hf:{directory}"}
    manifest = write_manifest(root / "mix.json", [
        {"task_name": "chat", "path": "idx/chat", "abs_weight": 0.6, "oversize_rule": "turns",
         "transform": {"name": "chat_template", "options": options}},
        {"task_name": "qa", "path": "idx/qa", "abs_weight": 0.4, "transform": "chatml"},
    ], tokenizer=f"hf:{directory}", max_length=96, batch_size=2)
    return manifest, directory, options


def test_a_manifest_mixing_both_forms_packs_each_sample_with_its_own_masks(mix) -> None:
    manifest, directory, options = mix
    tokenizer = load_tokenizer(f"hf:{directory}")
    transform = bind_transform(TransformRef("chat_template", options), trust_scripts=False)
    alone = {}
    for conversation in CONVERSATIONS:
        chunk = build_chunk([{"messages": conversation}], np.arange(1), epoch=0, start=0, nlines=1, transform=transform,
                            tokenizer=tokenizer, max_length=96, oversize_rule="turns", base_key=0)
        alone[tuple(chunk.src[: chunk.kept[0]].tolist())] = chunk.tgt[: chunk.kept[0]].tolist()
    stream = MixtureStream.from_manifest(manifest, max_samples=40)
    seen = {"chat": 0, "qa": 0}
    for batch in stream:
        bounds = batch.cu_seqlens.tolist()
        for begin, end in zip(bounds[:-1], bounds[1:]):
            task = int(batch.task_ids[begin])
            if task < 0:
                continue
            seen[stream.task_names[task]] += 1
            if stream.task_names[task] == "chat":
                assert batch.targets[begin:end].tolist() == alone[tuple(batch.input_ids[begin:end].tolist())]
    assert seen["chat"] > 5 and seen["qa"] > 5
    assert stream.progress[0].counts.get("truncated", 0) > 0  # the long conversation was cut at a turn


def test_packed_conversations_have_their_losses_as_alone(mix) -> None:
    manifest, directory, _ = mix
    tokenizer = load_tokenizer(f"hf:{directory}")
    model = build_model({"preset": "tiny-qwen2"}, seed=2, vocab_size=tokenizer.vocab_size).eval()
    batch = next(b for b in islice(MixtureStream.from_manifest(manifest), 10) if len(b.cu_seqlens) > 3)

    def tensor(array):
        return torch.as_tensor(np.asarray(array), dtype=torch.long)[None]

    with torch.no_grad():
        logits = model(input_ids=tensor(batch.input_ids), position_ids=tensor(batch.position_ids)).logits
        packed = token_loss(logits, tensor(batch.targets), tensor(batch.task_ids), 2)
        total, count = 0.0, 0
        bounds = batch.cu_seqlens.tolist()
        for begin, end in zip(bounds[:-1], bounds[1:]):
            if batch.task_ids[begin] < 0:
                continue
            src, tgt = batch.input_ids[begin:end], batch.targets[begin:end]
            single = token_loss(model(input_ids=tensor(src), position_ids=torch.arange(len(src))[None]).logits,
                                tensor(tgt), torch.full((1, len(src)), int(batch.task_ids[begin])), 2)
            total, count = total + float(single.total), count + int(single.count)
    assert int(packed.count) == count == int((batch.targets != IGNORE_INDEX).sum())
    assert float(packed.total) / int(packed.count) == pytest.approx(total / count, rel=1e-5, abs=1e-6)
