"""A packed batch's loss equals the token-weighted losses of its samples run one by one."""

from __future__ import annotations

import pytest
import torch

from fm9g.backends.models.attention import block_causal_mask, cu_seqlens_from_position_ids
from fm9g.backends.training.loss import token_loss
from fm9g.backends.models.build import build_model

from backend_helpers import make_batches


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-llama"])
def test_packed_loss_equals_per_sample_losses(preset):
    model = build_model({"preset": preset}, seed=3)
    model.eval()
    batch, samples = make_batches(3, batch_size=2, max_length=96, seed=1)[2]
    assert len(samples) >= 3 and batch.num_tokens < len(batch.input_ids)  # several samples and a padding tail

    def tensor(array):
        return torch.as_tensor(array, dtype=torch.long)[None]

    with torch.no_grad():
        logits = model(input_ids=tensor(batch.input_ids), position_ids=tensor(batch.position_ids)).logits
        packed = token_loss(logits, tensor(batch.targets), tensor(batch.task_ids), 2)
        total, count = 0.0, 0
        task_sum = torch.zeros(2, dtype=torch.float64)
        for task, src, tgt in samples:
            alone = model(input_ids=torch.tensor([src]), position_ids=torch.arange(len(src))[None]).logits
            single = token_loss(alone, torch.tensor([tgt]), torch.full((1, len(src)), task), 2)
            total += float(single.total)
            count += int(single.count)
            task_sum += single.task_sum
    assert int(packed.count) == count == sum(t != -100 for _, _, tgt in samples for t in tgt)
    assert float(packed.total) / int(packed.count) == pytest.approx(total / count, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(packed.task_sum, task_sum, rtol=1e-5, atol=1e-5)


def test_packed_logits_do_not_see_other_samples():
    """Changing one sample changes no logit of the others (attention stays inside a sample)."""
    model = build_model({"preset": "tiny-llama"}, seed=0).eval()
    ids = torch.randint(4, 260, (1, 40))
    positions = torch.cat([torch.arange(15), torch.arange(25)])[None]
    changed = ids.clone()
    changed[0, :15] = torch.randint(4, 260, (15,))
    with torch.no_grad():
        a = model(input_ids=ids, position_ids=positions).logits
        b = model(input_ids=changed, position_ids=positions).logits
    torch.testing.assert_close(a[0, 15:], b[0, 15:], rtol=0, atol=1e-6)
    assert (a[0, :15] - b[0, :15]).abs().max() > 1e-3


def test_boundaries_from_position_ids():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    cu, longest = cu_seqlens_from_position_ids(positions)
    assert cu.tolist() == [0, 3, 5, 9] and longest == 4 and cu.dtype == torch.int32
    mask = block_causal_mask(positions)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False, False, False, False]
    assert mask.sum() == 6 + 3 + 10
