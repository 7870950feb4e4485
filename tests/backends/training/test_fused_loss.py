"""``model.loss_chunk_tokens``: lm_head and the cross-entropy fused, a chunk of tokens at a time, give
the loss, per-task figures and gradients of the full-logits path, through LoRA and real runs.

Tolerances: on CPU both paths compute in float32, and what differs is only the order of float32
sums (the logits' dot products are the same; the weight gradient is added chunk by chunk): measured
≤ 5e-7 of the largest gradient entry and ≤ 1e-7 relative on the loss. The checks allow 1e-5. The
untrained tiny models give every token a loss near ln(vocab), so dropping or double-counting one
token of the ~170 trained in a batch (a chunk boundary off by one), training an ignored target (a
missing mask) or losing the −1 of the one-hot moves the loss or some gradient by ≥ 1/170 ≈ 6e-3,
hundreds of times the tolerance.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from backend_helpers import make_batches, run_fm9g, write_train_config
from fm9g.backends.models.build import build_model
from fm9g.backends.models.presets import preset_config
from fm9g.backends.training.batches import to_device
from fm9g.backends.training.config import load_train_config
from fm9g.backends.training.fused_loss import FusedLossHead, find_fused_head, install_fused_head
from fm9g.backends.training.loss import batch_loss
from fm9g.backends.training.metrics import read_log
from fm9g.backends.training.model import build_training_model
from fm9g.core.errors import Fm9gError, ValidationFailed
from fm9g.core.plugins import get_plugin

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def batch():
    """A packed batch of two 96-token rows: several samples, ignored prompt targets, a padding tail (192 tokens)."""
    packed, samples = make_batches(3, batch_size=2, max_length=96, seed=1)[2]
    assert len(samples) >= 3 and (packed.targets == -100).sum() > 20
    return to_device(packed, torch.device("cpu"))


def loss_and_grads(model, batch, scale=0.01):
    """The batch's :class:`TokenLoss` and every trainable parameter's gradient of ``scale · loss sum``."""
    model.zero_grad(set_to_none=True)
    losses = batch_loss(model, batch, 2)
    (losses.total * scale).backward()
    return losses, {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_same(full, fused):
    (full_loss, full_grads), (fused_loss, fused_grads) = full, fused
    assert float(fused_loss.total) == pytest.approx(float(full_loss.total), rel=TOLERANCE)
    assert int(fused_loss.count) == int(full_loss.count)
    torch.testing.assert_close(fused_loss.task_sum, full_loss.task_sum, rtol=TOLERANCE, atol=0)
    torch.testing.assert_close(fused_loss.task_count, full_loss.task_count, rtol=0, atol=0)
    assert fused_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        error = float((fused_grads[name] - grad).abs().max())
        assert error <= TOLERANCE * float(grad.abs().max()), (name, error, float(grad.abs().max()))


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("chunk_tokens", [1, 64, 50, 192, 1000])  # 192 tokens: dividing, not dividing, one chunk, more
def test_fused_loss_equals_the_full_logits(preset, chunk_tokens, batch):
    model = build_model({"preset": preset}, seed=3)
    full = loss_and_grads(model, batch)
    weight = model.lm_head.weight
    install_fused_head(model, chunk_tokens)
    assert isinstance(model.lm_head, FusedLossHead) and model.lm_head.weight is weight
    assert "lm_head.weight" in model.state_dict()
    assert_same(full, loss_and_grads(model, batch))


def test_tied_embeddings_stay_tied_and_get_both_gradients(batch):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(preset_config("tiny-llama", tie_word_embeddings=True), dtype=torch.float32)
    full = loss_and_grads(model, batch)
    install_fused_head(model, 50)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert_same(full, loss_and_grads(model, batch))


def test_without_targets_the_head_is_the_plain_linear_and_no_grad_gives_the_same_losses(batch):
    model = build_model({"preset": "tiny-llama"}, seed=3).eval()
    fused = install_fused_copy(model, 50)
    with torch.no_grad():
        plain_logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
        assert torch.equal(fused(input_ids=batch.input_ids, position_ids=batch.position_ids).logits, plain_logits)
        plain, chunked = batch_loss(model, batch, 2), batch_loss(fused, batch, 2)
    assert float(chunked.total) == pytest.approx(float(plain.total), rel=TOLERANCE)
    torch.testing.assert_close(chunked.task_sum, plain.task_sum, rtol=TOLERANCE, atol=0)


def install_fused_copy(model, chunk_tokens):
    fused = copy.deepcopy(model)
    install_fused_head(fused, chunk_tokens)
    return fused


@pytest.mark.parametrize("engine", ["peft", "opendelta"])
def test_lora_trains_the_same_through_the_fused_head(engine, batch):
    """LoRA wraps the model after the head is in (as ``build_training_model`` orders it): the frozen
    head gets no gradient, the LoRA tensors the same ones."""
    delta = {"engine": engine, "method": "lora", "lora_r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0}
    base = build_model({"preset": "tiny-qwen2"}, seed=3)
    apply = get_plugin("delta_engine", engine, where="test").apply
    plain = apply(copy.deepcopy(base), delta)
    fused = apply(install_fused_copy(base, 50), delta)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # B is zero at init, which would hide a wrong gradient through A
        for parameters in zip(plain.parameters(), fused.parameters()):
            if parameters[0].requires_grad:
                noise = torch.randn(parameters[0].shape, generator=generator) * 0.05
                for parameter in parameters:
                    parameter.copy_(noise)
    assert find_fused_head(fused) is not None
    full, chunked = loss_and_grads(plain, batch), loss_and_grads(fused, batch)
    assert len(full[1]) == 4 * 7  # 2 layers x 7 linears x (A, B)
    assert_same(full, chunked)
    assert find_fused_head(fused).weight.grad is None


def test_a_run_builds_its_model_with_the_head_under_the_delta(tmp_path):
    """``build_training_model`` puts the head in before the delta wraps the model, where the Trainer finds it."""
    config_file = tmp_path / "train.json"
    config_file.write_text(json.dumps({"data": {"manifest": "mix.json"}, "save": "run", "train_iters": 2,
                                       "model": {"preset": "tiny-llama", "loss_chunk_tokens": 64},
                                       "delta": {"method": "lora", "lora_r": 4}}), encoding="utf-8")
    config = load_train_config(config_file)
    built = build_training_model(config, device=torch.device("cpu"), vocab_size=None, resume=None, is_main=True,
                                 base_dtype=torch.float32)
    head = find_fused_head(built.model)
    assert head is not None and head.chunk_tokens == 64 and not head.weight.requires_grad
    assert "base_model.model.lm_head.weight" in built.model.state_dict()


def test_bad_settings_are_one_line_errors(tmp_path):
    model = build_model({"preset": "tiny-llama"}, seed=0)
    with pytest.raises(Fm9gError, match="negative"):
        install_fused_head(model, -1)
    with pytest.raises(Fm9gError, match="output embedding"):
        install_fused_head(torch.nn.Linear(4, 4), 16)
    install_fused_head(model, 16)
    with pytest.raises(Fm9gError, match="bias-free nn.Linear"):  # installed twice
        install_fused_head(model, 16)
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"data": {"manifest": "mix.json"}, "model": {"preset": "tiny-llama"},
                                  "save": "run", "train_iters": 2}), encoding="utf-8")
    assert load_train_config(config)["model"]["loss_chunk_tokens"] == 0
    with pytest.raises(ValidationFailed, match="loss_chunk_tokens"):
        load_train_config(config, ["model.loss_chunk_tokens=-4"])


def train(tmp_path, mixture, name, *extra):
    """A real ``fm9g train`` run (3 steps of 2 micro-batches each, held-out evaluation at the end): its logs."""
    config = write_train_config(tmp_path, mixture / "mix.json", f"{name}.json", save=name, train_iters=3,
                                save_iters=0, eval_iters=3, model={"preset": "tiny-qwen2"})
    result = run_fm9g("train", "--config", str(config), *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return read_log(tmp_path / name / "train_log.jsonl"), read_log(tmp_path / name / "eval_log.jsonl")


@pytest.fixture(scope="module")
def plain_run(mixture, tmp_path_factory):
    """One process on the full logits, accumulating the 2 global batches a step of 2 processes trains."""
    return train(tmp_path_factory.mktemp("plain"), mixture, "plain", "grad_accum=2")


def assert_same_run(run, plain_run, rel):
    (train_log, eval_log), (plain_train, plain_eval) = run, plain_run
    assert [r["batches"] for r in plain_train] == [[[0, 1]], [[2, 3]], [[4, 5]]]
    assert len(train_log) == 3 and len(eval_log) == len(plain_eval) == 1
    assert [r["tokens"] for r in train_log] == [r["tokens"] for r in plain_train]
    assert [r["loss"] for r in train_log] == pytest.approx([r["loss"] for r in plain_train], rel=rel)
    assert [r["grad_norm"] for r in train_log] == pytest.approx([r["grad_norm"] for r in plain_train], rel=rel)
    for task, figures in plain_eval[0]["tasks"].items():
        assert eval_log[0]["tasks"][task]["loss"] == pytest.approx(figures["loss"], rel=rel)
        assert eval_log[0]["tasks"][task]["target_tokens"] == figures["target_tokens"]


@pytest.mark.slow
def test_training_run_with_the_fused_loss_logs_the_losses_of_the_full_logits(mixture, tmp_path, plain_run):
    """The same training and held-out losses and gradient norms with ``loss_chunk_tokens`` as without.
    After AdamW steps the float32 rounding differences grow a little; rel 1e-5 still sits far below
    what a wrong token or gradient moves (the first step's loss alone would differ by ≥ 6e-3)."""
    fused = train(tmp_path, mixture, "fused", "grad_accum=2", "model.loss_chunk_tokens=100")
    assert_same_run(fused, plain_run, rel=1e-5)


@pytest.mark.slow
def test_two_process_fsdp_with_the_fused_loss_matches_one_process_without(mixture, tmp_path, plain_run):
    """FSDP2 over 2 gloo processes: the head's weight is only unsharded inside the root's forward, so
    the fused loss must run there; rank r trains global batches b ≡ r (mod 2), and the figures equal
    the single plain process's."""
    sharded = train(tmp_path, mixture, "fsdp", "--nproc-per-node", "2", "model.loss_chunk_tokens=100")
    assert [r["batches"] for r in sharded[0]] == [[[0], [1]], [[2], [3]], [[4], [5]]]
    assert_same_run(sharded, plain_run, rel=1e-5)
