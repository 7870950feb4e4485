#!/usr/bin/env python
"""Where held-out evaluation's time goes on a GPU: fm9g's Evaluator on the bench mixture's datasets
(held out as a whole, about 150k target tokens per task) against the 1.1B's bare forward pass,
forward + token loss, and forward + backward, each over the same packed batches (warm).

    PYTHONPATH=$PWD python benchmarks/eval_probe.py --work .benchdata
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from dataclasses import replace
from train_bench import prepare_data
from fm9g.backends.models.build import build_model
from fm9g.backends.models.kernels import apply_kernels
from fm9g.backends.torch_backend.training import set_dtypes
from fm9g.backends.training.batches import to_device
from fm9g.backends.training.collectives import TorchDistributed
from fm9g.backends.training.evaluate import Evaluator
from fm9g.backends.training.loss import token_loss
from fm9g.mixer.held_out import HeldOutBatches, find_held_out
from fm9g.mixer.manifest import load_manifest
from fm9g.tokenizers import load_tokenizer

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--work", default=".benchdata")
args = parser.parse_args()
dev = torch.device("cuda")
manifest = prepare_data(Path(args.work), "small")
mix = load_manifest(manifest)
mix = replace(mix, datasets=tuple(replace(s, eval_path=s.path) for s in mix.datasets))
tok = load_tokenizer(mix.tokenizer)
held = HeldOutBatches(find_held_out(mix), tokenizer=tok, seed=1, max_length=4096, batch_size=4, max_target_tokens=150000)
model = build_model({"preset": "llama-1.1b", "vocab_size": max(32000, tok.vocab_size)}, seed=0, device=dev)
apply_kernels(model, "liger", dev)
set_dtypes(model, {"model": {"dtype": "auto"}, "delta": None}, dev)
ev = Evaluator(held, TorchDistributed(), autocast_dtype=torch.bfloat16)
ev(model, 0)
batches = [to_device(b, dev) for b in held]
ntok = sum(b.num_tokens for b in batches)
print("batches", len(batches), "tokens", ntok)
def timed(fn, label):
    fn(); torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize(); s = time.perf_counter() - t
    print(f"{label}: {ntok / s:,.0f} tok/s ({s*1000:.0f} ms)", flush=True)
r = ev(model, 0); print("evaluator warm", f"{r['tokens_per_s']:,.0f}")
model.eval()
def fwd(mode):
    def run():
        with mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for b in batches:
                model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False)
    return run
def fwd_loss(mode):
    def run():
        with mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for b in batches:
                lg = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
                token_loss(lg, b.targets, b.task_ids, 2)
    return run
timed(fwd(torch.no_grad), "forward only, no_grad")
timed(fwd(torch.inference_mode), "forward only, inference_mode")
timed(fwd_loss(torch.no_grad), "forward+loss, no_grad")
timed(fwd_loss(torch.inference_mode), "forward+loss, inference_mode")
model.train()
def train_like():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for b in batches:
            lg = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
            token_loss(lg, b.targets, b.task_ids, 2).total.backward()
timed(train_like, "forward+backward (no optimizer)")
