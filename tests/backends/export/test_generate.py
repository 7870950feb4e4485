"""``fm9g generate`` on real checkpoints (full and LoRA) and an exported HF directory: the prompt is
rendered by the task's training transform, and the KV-cache answer equals a greedy decode by hand."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from backend_helpers import run_fm9g, write_train_config
from fm9g.backends.export.inference import load_model
from fm9g.commands.generate import generate, render_prompt
from fm9g.mixer.transforms import TransformRef, bind_transform
from fm9g.tokenizers import load_tokenizer

PROMPT = "the model reads packed rows"


def _train(directory: Path, mixture: Path, *overrides: str) -> Path:
    directory.mkdir()
    config = write_train_config(directory, mixture / "mix.json")
    result = run_fm9g("train", "--config", str(config), "train_iters=2", "save_iters=2", "report_to=[]", *overrides)
    assert result.returncode == 0, result.stderr
    return directory / "run" / "step-00000002"


@pytest.fixture(scope="module")
def checkpoints(mixture: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generate")
    return {"full": _train(root / "full", mixture),
            "lora": _train(root / "lora", mixture, "delta.lora_r=4", 'delta.lora_layer=["q_proj","v_proj"]')}


def greedy_by_hand(model: torch.nn.Module, ids: list[int], eos: int, count: int) -> list[int]:
    """Argmax decoding with a full forward pass per token (no cache): what the cached answer must equal."""
    model.config.use_cache = False
    new: list[int] = []
    with torch.no_grad():
        for _ in range(count):
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            token = int(logits.argmax())
            new.append(token)
            if token == eos:
                break
    return new


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_generate_renders_the_task_transform_and_answers_as_greedy_decoding(checkpoints, kind):
    checkpoint = checkpoints[kind]
    chatml = bind_transform(TransformRef(name="chatml"), trust_scripts=False)
    rendered = chatml({"input": PROMPT, "output": ""}, 0, random.Random(0))["input"]
    assert rendered.startswith("<|im_start|>system") and PROMPT in rendered
    loaded = load_model(checkpoint=checkpoint)
    tokenizer = load_tokenizer("byte")
    if kind == "full":  # the command line once; the LoRA case runs the same code in-process
        result = run_fm9g("generate", "--checkpoint", str(checkpoint), "--prompt", PROMPT, "--task", "chat",
                          "--max-new-tokens", "12")
        assert result.returncode == 0, result.stderr
        assert "task chat's transform chatml" in result.stderr and rendered in result.stderr
        answer = result.stdout.removesuffix("\n")
    else:
        answer = generate(loaded.model, tokenizer, rendered, max_new_tokens=12)
    ids = [tokenizer.bos_id, *tokenizer.encode(rendered)]
    by_hand = greedy_by_hand(loaded.model, ids, tokenizer.eos_id, 12)
    expected = tokenizer.decode(by_hand[:-1] if by_hand[-1] == tokenizer.eos_id else by_hand)
    assert greedy_by_hand(loaded.model, ids[1:], tokenizer.eos_id, 12) != by_hand  # the BOS matters to this model
    assert greedy_by_hand(loaded.model, [tokenizer.bos_id, *tokenizer.encode(PROMPT)], tokenizer.eos_id, 12) != by_hand
    assert answer == expected
    sampled = [generate(loaded.model, tokenizer, rendered, max_new_tokens=12, sample=True, seed=seed)
               for seed in (1, 1)]
    assert sampled[0] == sampled[1]  # a seed fixes the sample


@pytest.mark.slow
def test_an_exported_model_answers_as_its_checkpoint_and_template_overrides(checkpoints, tmp_path):
    exported = tmp_path / "hf"
    result = run_fm9g("export", "--checkpoint", str(checkpoints["full"]), "--output", str(exported),
                      "--tokenizer", "byte")
    assert result.returncode == 0, result.stderr
    tokenizer = load_tokenizer("byte")
    fm9g_template = bind_transform(TransformRef(name="fm9g"), trust_scripts=False)
    rendered = render_prompt(fm9g_template, PROMPT)
    assert rendered == f"<用户>{PROMPT}<AI>"
    answers = [generate(load_model(**source).model, tokenizer, rendered, max_new_tokens=10)
               for source in ({"checkpoint": checkpoints["full"]}, {"hf_dir": exported})]
    assert answers[0] == answers[1]
    cli = run_fm9g("generate", "--model", str(exported), "--prompt", PROMPT, "--template", "fm9g",
                   "--tokenizer", "byte", "--max-new-tokens", "10")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == answers[1] + "\n" and "--template fm9g" in cli.stderr
    bare = run_fm9g("generate", "--model", str(exported), "--prompt", PROMPT, "--tokenizer", "byte",
                    "--max-new-tokens", "2")
    assert bare.returncode == 0 and "used as it is" in bare.stderr
    wrong = run_fm9g("generate", "--checkpoint", str(checkpoints["full"]), "--prompt", PROMPT, "--task", "chatt")
    assert wrong.returncode == 2 and "did you mean 'chat'" in wrong.stderr
