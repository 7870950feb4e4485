"""``fm9g export``: training checkpoints (built here) -> HF directories that load and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from _convert_helpers import (
    same_tokenizer,
    PROMPT_IDS,
    logits,
    peft_wrap,
    run_cli,
    state_of,
    tiny_model,
    train_config,
    train_tiny_hf_tokenizer,
    write_full_checkpoint,
    write_lora_checkpoint,
)
from fm9g.backends.weights.names import hf_to_seed
from fm9g.cli import main
from fm9g.core.errors import Fm9gError
from fm9g.tokenizers import load_tokenizer
from fm9g.tokenizers.byte import ByteTokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny-qwen2", seed=11)


@pytest.fixture
def full_checkpoint(tmp_path: Path, model) -> Path:
    return write_full_checkpoint(tmp_path / "run", model, config=train_config({"preset": "tiny-qwen2"}))


def _from_checkpoint(directory: Path):
    """The model the checkpoint describes, built the plain way: config.json + load_state_dict."""
    from transformers import AutoConfig

    built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    built.load_state_dict(load_file(directory / "model.safetensors"))
    return built.eval()


def _error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_full_export_loads_generates_and_gives_the_same_logits(tmp_path: Path, full_checkpoint: Path) -> None:
    out = tmp_path / "hf-out"
    done = run_cli("export", "--checkpoint", str(full_checkpoint), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        ".fm9g-output", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert "byte" in done.stderr
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(loaded), logits(_from_checkpoint(full_checkpoint)))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
    text = "héllo, 世界 <s>"
    assert tokenizer.encode(text, add_special_tokens=False) == ByteTokenizer().encode(text)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)
    # As trained: every sample begins with BOS, and inference uses the KV cache.
    assert tokenizer.encode(text) == [1, *ByteTokenizer().encode(text)]
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    assert generation.get("use_cache", True) is True
    auto = AutoTokenizer.from_pretrained(out)
    prompt = auto("hello", return_tensors="pt")
    assert prompt["input_ids"][0, 0] == 1
    generated = loaded.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, 6 + 6)
    assert torch.equal(generated[0, :6], prompt["input_ids"][0])
    uncached = loaded.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(generated, uncached)


def test_sharded_export_has_its_own_index(tmp_path: Path, full_checkpoint: Path, model) -> None:
    out = tmp_path / "sharded"
    assert main(["export", "--checkpoint", str(full_checkpoint), "--output", str(out), "--max-shard-size", "40KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert sorted({*index["weight_map"].values()}) == sorted(p.name for p in out.glob("model-*.safetensors"))
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out)), logits(model))
    assert main(["export", "--checkpoint", str(full_checkpoint), "--output", str(out), "--force"]) == 0
    assert not list(out.glob("*.index.json")) and not list(out.glob("model-*"))
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out)), logits(model))


def test_dtype_option_and_hf_tokenizer(tmp_path: Path, model) -> None:
    tokenizer_dir = train_tiny_hf_tokenizer(tmp_path / "tok")
    checkpoint = write_full_checkpoint(tmp_path / "run", model,
                                       config=train_config({"preset": "tiny-qwen2"}, tokenizer=f"hf:{tokenizer_dir}"))
    out = tmp_path / "bf16"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out), "--dtype", "bfloat16"]) == 0
    assert {t.dtype for t in state_of(out).values()} == {torch.bfloat16}
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert same_tokenizer(out / "tokenizer.json", tokenizer_dir / "tokenizer.json")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 1


def test_tokenizer_defaults_to_the_one_the_runs_mix_manifest_names(tmp_path: Path, model, monkeypatch) -> None:
    train_tiny_hf_tokenizer(tmp_path / "data" / "tok")
    manifest = tmp_path / "data" / "mix.json"
    manifest.write_text(json.dumps({"tokenizer": "hf:tok", "datasets": [
        {"task_name": "a", "path": "idx/a", "abs_weight": 1.0}]}), encoding="utf-8")
    config = {**train_config({"preset": "tiny-qwen2"}, tokenizer=None), "data": {"manifest": str(manifest)}}
    checkpoint = write_full_checkpoint(tmp_path / "run", model, config=config)
    monkeypatch.chdir(tmp_path / "run")  # the recorded absolute paths work from any directory
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 0
    assert same_tokenizer(tmp_path / "out" / "tokenizer.json", tmp_path / "data" / "tok" / "tokenizer.json")


def test_bad_checkpoints_and_outputs_are_refused(tmp_path: Path, full_checkpoint: Path, capsys) -> None:
    out = tmp_path / "out"
    err = _error(capsys, "export", "--checkpoint", str(full_checkpoint), "--output", str(full_checkpoint / "hf"))
    assert "lies inside the input" in err
    err = _error(capsys, "export", "--checkpoint", str(full_checkpoint), "--output", str(tmp_path), "--force")
    assert "lies inside the output" in err
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "not empty" in _error(capsys, "export", "--checkpoint", str(full_checkpoint), "--output", str(out))
    assert (out / "keep.txt").read_text() == "mine"
    err = _error(capsys, "export", "--checkpoint", str(full_checkpoint), "--output", str(tmp_path / "o2"),
                 "--merge-lora")
    assert "holds full weights" in err
    err = _error(capsys, "export", "--checkpoint", str(full_checkpoint), "--output", str(tmp_path / "o2"),
                 "--format", "opendelta")
    assert "applies to an unmerged LoRA adapter only" in err
    weights = full_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    err = _error(capsys, "export", "--checkpoint", str(full_checkpoint), "--output", str(tmp_path / "o3"))
    assert "cannot read safetensors file" in err and "truncated or corrupt" in err
    assert not (tmp_path / "o3").exists() and not list(tmp_path.glob(".o3.*"))
    (full_checkpoint / "checkpoint.json").unlink()
    assert "no checkpoint.json" in _error(capsys, "export", "--checkpoint", str(full_checkpoint),
                                          "--output", str(tmp_path / "o4"))


def test_sentencepiece_tokenizer_spec(tmp_path: Path, model) -> None:
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world, the quick brown fox jumps over the lazy dog\n" * 100 + "中文 测试\n" * 50)
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                             model_type="bpe", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                                             byte_fallback=True, minloglevel=2)
    checkpoint = write_full_checkpoint(tmp_path / "run", model, config=train_config(
        {"preset": "tiny-qwen2"}, tokenizer=f"sp:{tmp_path / 'sp.model'}"))
    out = tmp_path / "out"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out)]) == 0
    assert (out / "tokenizer.model").read_bytes() == (tmp_path / "sp.model").read_bytes()
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
    for text in ["hello world 中文 xyz", " two  spaces\nnewline ü"]:
        assert tokenizer.encode(text, add_special_tokens=False) == processor.encode(text)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory, model):
    """A base HF dir saved in shards (a reference dir with its own index), a PEFT model on it, PEFT's merge."""
    root = tmp_path_factory.mktemp("lora")
    base_dir = root / "base"
    model.save_pretrained(base_dir, max_shard_size="40KB")
    train_tiny_hf_tokenizer(base_dir)
    peft_model = peft_wrap(model, r=4, alpha=16.0, seed=2)
    peft_logits = logits(peft_model)
    checkpoint_dir = root / "runs"
    delta = {"method": "lora", "lora_r": 4, "lora_alpha": 16.0}
    config = train_config({"hf_path": str(base_dir)}, tokenizer=None, delta=delta)
    checkpoint = write_lora_checkpoint(checkpoint_dir, peft_model, config=config)
    merged = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    return base_dir, checkpoint, peft_logits, merged


def test_merge_lora_equals_peft_and_ignores_the_reference_index(tmp_path: Path, lora_setup) -> None:
    base_dir, checkpoint, peft_logits, peft_merged = lora_setup
    assert (base_dir / "model.safetensors.index.json").is_file()
    out = tmp_path / "merged"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out), "--merge-lora"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and not any(name.endswith(".index.json") for name in names)
    assert same_tokenizer(out / "tokenizer.json", base_dir / "tokenizer.json")
    merged = state_of(out)
    assert merged.keys() == peft_merged.keys()
    for name, tensor in peft_merged.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-6, atol=1e-6)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(loaded), peft_logits, rtol=1e-5, atol=1e-5)


def test_unmerged_peft_adapter_loads_with_peft(tmp_path: Path, lora_setup) -> None:
    from peft import PeftModel

    base_dir, checkpoint, peft_logits, _ = lora_setup
    out = tmp_path / "adapter"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out)]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir.resolve())
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out).eval()
    torch.testing.assert_close(logits(reloaded), peft_logits, rtol=1e-6, atol=1e-6)


def test_opendelta_adapter_has_seed_keys_and_merges_back(tmp_path: Path, lora_setup, model) -> None:
    _, checkpoint, _, peft_merged = lora_setup
    out = tmp_path / "opendelta"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out), "--format", "opendelta"]) == 0
    lora = torch.load(out / "opendelta_lora.pt", weights_only=True)
    a_key = "encoder.layers.1.self_att.self_attention.attention_out.lora.lora_A"
    assert lora[a_key].shape == (4, 64)
    assert lora["encoder.layers.1.ffn.ffn.w_out.lora.lora_B"].shape == (64, 4)
    assert not any(key.endswith(".weight") for key in lora)
    assert len(lora) == 2 * 7 * 2
    finetune = json.loads((out / "lora_config.json").read_text())["finetune"]
    assert (finetune["lora_r"], finetune["lora_alpha"]) == (4, 16.0)
    assert set(finetune["lora_layer"]) == {"project_q", "project_k", "project_v", "attention_out", "w_0", "w_1",
                                           "w_out"}
    base_pt = tmp_path / "base.pt"
    torch.save(hf_to_seed(model.state_dict()), base_pt)
    merged_dir = tmp_path / "merged"
    assert main(["convert", "pt2hf", "--input", str(base_pt), "--preset", "tiny-qwen2", "--output", str(merged_dir),
                 "--lora-ckpt", str(out / "opendelta_lora.pt"), "--lora-config", str(out / "lora_config.json")]) == 0
    merged = state_of(merged_dir)
    for name, tensor in peft_merged.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-6, atol=1e-6)


def test_lora_base_from_seed_pt_or_base_option(tmp_path: Path, model, capsys) -> None:
    peft_model = peft_wrap(model, r=2, alpha=4.0, targets=["q_proj", "down_proj"], seed=4)
    expected = logits(peft_model)
    seed_pt = tmp_path / "base.pt"
    torch.save(hf_to_seed(model.state_dict()), seed_pt)
    with_seed = write_lora_checkpoint(tmp_path / "a", peft_model,
                                      config=train_config({"preset": "tiny-qwen2", "seed_pt": str(seed_pt)}))
    assert main(["export", "--checkpoint", str(with_seed), "--output", str(tmp_path / "m1"), "--merge-lora"]) == 0
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m1")), expected,
                               rtol=1e-5, atol=1e-5)
    bare = write_lora_checkpoint(tmp_path / "b", peft_model, config=train_config({"preset": "tiny-qwen2"}))
    err = _error(capsys, "export", "--checkpoint", str(bare), "--output", str(tmp_path / "m2"), "--merge-lora")
    assert "base weights are not stored anywhere" in err and "--base" in err
    assert main(["export", "--checkpoint", str(bare), "--output", str(tmp_path / "m2"), "--merge-lora",
                 "--base", str(seed_pt)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m2").eval()
    torch.testing.assert_close(logits(merged, PROMPT_IDS), expected, rtol=1e-5, atol=1e-5)


def _plant_remote_code(directory: Path, sentinel: Path, config_file: str, key: str) -> None:
    """Make ``directory`` ask for its own Python code (``auto_map``), code that would leave ``sentinel``."""
    (directory / "planted.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n"
                                          "from transformers import Qwen2Config as PlantedConfig\n"
                                          "from transformers import PreTrainedTokenizerFast as PlantedTokenizer\n")
    document = json.loads((directory / config_file).read_text())
    document["auto_map"] = {key: "planted.PlantedConfig" if key == "AutoConfig" else ["planted.PlantedTokenizer", None]}
    (directory / config_file).write_text(json.dumps(document))


def test_no_code_from_a_checkpoint_or_a_tokenizer_directory(tmp_path: Path, model, capsys) -> None:
    """A crafted checkpoint (stored config with trust_remote_code, config.json with auto_map) and an
    hf: tokenizer with custom code never run their Python: only the user's --trust-remote-code would."""
    sentinel = tmp_path / "code-ran"
    config = train_config({"preset": "tiny-qwen2", "trust_remote_code": True})
    checkpoint = write_full_checkpoint(tmp_path / "run", model, config=config)
    _plant_remote_code(checkpoint, sentinel, "config.json", "AutoConfig")
    main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")])
    assert not sentinel.exists()

    tokenizer_dir = tmp_path / "tok"
    AutoTokenizer.from_pretrained(train_tiny_hf_tokenizer(tmp_path / "tok0")).save_pretrained(tokenizer_dir)
    (tokenizer_dir / "tokenizer.json").unlink()  # make transformers build it from the config and its code
    _plant_remote_code(tokenizer_dir, sentinel, "tokenizer_config.json", "AutoTokenizer")
    try:
        load_tokenizer(f"hf:{tokenizer_dir}")
    except Fm9gError:
        pass  # refusing is as good as loading the built-in class: what matters is that no code ran
    assert not sentinel.exists()
