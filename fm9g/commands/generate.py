"""``fm9g generate``: sample an answer from trained weights, the prompt rendered as training rendered it.

The weights are a training checkpoint (full, or LoRA merged into its base) or a Hugging Face
directory, loaded as ``fm9g eval`` loads them. The prompt goes through the training transform: with
``--template NAME`` that transform plugin; otherwise the transform the run's mixture gave the task
(``--task``; the only task, or the first, by default), read from the checkpoint's own data (its mix
manifest, or the manifest its materialized mixture was made from) or ``--manifest``. The model then
sees ``[bos] + tokens(input)`` as in a training sample, and ``transformers``' ``generate`` continues it
with the KV cache, greedily or sampled (``--sample``), until the end-of-sequence token or
``--max-new-tokens``. The rendered prompt goes to stderr, the answer to stdout.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

NAME = "generate"
HELP = "generate from a checkpoint or HF model, the prompt rendered with the training transform (KV cache)"
ORDER = 68


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="a training checkpoint (step-NNNNNNNN), full or LoRA")
    source.add_argument("--model", metavar="HF_DIR", help="a Hugging Face model directory (e.g. fm9g export's)")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the user's input (a record's 'input')")
    parser.add_argument("--template", metavar="NAME",
                        help="render with this transform plugin (chatml, fm9g, identity, ...) instead of the task's")
    parser.add_argument("--task", metavar="NAME", help="whose transform renders the prompt (default: the first task)")
    parser.add_argument("--manifest", metavar="MIX", help="the mix manifest to take the transform from "
                                                          "(default: the checkpoint's)")
    parser.add_argument("--tokenizer", metavar="SPEC", help="byte, hf:DIR, sp:FILE.model (default: the checkpoint's "
                                                            "run's, or the model directory's own)")
    parser.add_argument("--base", metavar="PATH", help="a LoRA checkpoint's base weights, if its run did not store them")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="at most N new tokens (128)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="with --sample (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="with --sample: nucleus mass (default 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="with --sample: keep the K likeliest (default 0: all)")
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed (default 0)")
    parser.add_argument("--trust-scripts", action="store_true", help="allow a seed transform script the manifest names")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model config that needs its own Python code (auto_map)")


def run(args: argparse.Namespace) -> int:
    from fm9g.core.errors import Fm9gError

    if args.max_new_tokens < 1:
        raise Fm9gError("--max-new-tokens must be at least 1", where="--max-new-tokens")
    if args.sample and not (args.temperature > 0 and 0 < args.top_p <= 1 and args.top_k >= 0):
        raise Fm9gError("--sample needs --temperature > 0, 0 < --top-p <= 1 and --top-k >= 0", where="command line")
    from fm9g.backends.export.inference import load_model

    loaded = load_model(checkpoint=args.checkpoint, hf_dir=args.model, base=args.base,
                        trust_remote_code=args.trust_remote_code)
    tokenizer = _tokenizer(args, loaded)
    where, transform = _transform(args, loaded.train_config or {})
    prompt = render_prompt(transform, args.prompt)
    print(f"{loaded.description}; prompt rendered by {where}:\n{prompt}", file=sys.stderr)
    answer = generate(loaded.model, tokenizer, prompt, max_new_tokens=args.max_new_tokens, sample=args.sample,
                      temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    print(answer)
    return 0


def _tokenizer(args: argparse.Namespace, loaded: Any) -> Any:
    from fm9g.core.errors import Fm9gError
    from fm9g.tokenizers import load_tokenizer

    spec = args.tokenizer or loaded.tokenizer_spec
    if spec is None and args.model and any((Path(args.model) / name).is_file()
                                           for name in ("tokenizer.json", "tokenizer_config.json")):
        spec = f"hf:{args.model}"
    if spec is None:
        raise Fm9gError("no tokenizer: the model names none", where=args.checkpoint or args.model,
                        fix="pass --tokenizer SPEC (byte, hf:DIR, sp:FILE.model)")
    return load_tokenizer(spec)


def _transform(args: argparse.Namespace, train_config: dict[str, Any]) -> tuple[str, Any]:
    """(what renders the prompt, the bound transform function)."""
    from fm9g.mixer.transforms import TransformRef, bind_transform

    if args.template:
        return f"--template {args.template}", bind_transform(TransformRef(name=args.template), trust_scripts=False,
                                                             where="--template")
    tasks = _task_transforms(args, train_config)
    if not tasks:
        print("fm9g generate: note: no mixture to take the task's transform from: the prompt is used as it is "
              "(pass --template NAME or --manifest MIX)", file=sys.stderr)
        return "no transform (identity)", bind_transform(TransformRef(name="identity"), trust_scripts=False)
    name = args.task or next(iter(tasks))
    if name not in tasks:
        from fm9g.core.errors import UnknownName

        raise UnknownName("task", name, tasks, where="--task")
    ref = tasks[name]
    described = f"script {ref.script}" if ref.script else f"transform {ref.name}"
    return (f"task {name}'s {described}",
            bind_transform(ref, trust_scripts=args.trust_scripts or bool(train_config.get("trust_scripts")),
                           where=f"task {name}"))


def _task_transforms(args: argparse.Namespace, train_config: dict[str, Any]) -> dict[str, Any]:
    """Each task's transform, in manifest order: from ``--manifest``, else the run's data."""
    from fm9g.mixer.manifest import load_manifest

    data = train_config.get("data") or {}
    if args.manifest or data.get("manifest"):
        path = Path(args.manifest or data["manifest"])
        if path.is_file():
            return {spec.task_name: spec.transform for spec in load_manifest(path, check_paths=False).datasets}
    if data.get("mixture") and (Path(data["mixture"]) / "mixture.json").is_file():
        from fm9g.core.schemas import read_json

        recorded = read_json(Path(data["mixture"]) / "mixture.json").get("manifest") or {}
        return {dataset["task_name"]: _recorded_ref(dataset["transform"]) for dataset in recorded.get("datasets", [])}
    return {}


def _recorded_ref(recorded: dict[str, Any]) -> Any:
    """A transform as a materialized mixture records it: ``{"name", "options"}`` or ``{"script"}``."""
    from fm9g.mixer.transforms import TransformRef

    if recorded.get("script"):
        return TransformRef(script=Path(recorded["script"]))
    return TransformRef(name=recorded.get("name"), options=recorded.get("options") or {})


def render_prompt(transform: Any, text: str) -> str:
    """What a training sample's prompt would be for a record whose input is ``text``: the transform's
    ``input``, or a rendered conversation's text up to its (empty) answer."""
    result = transform({"input": text, "output": ""}, 0, random.Random(0))
    if isinstance(result, dict) and isinstance(result.get("text"), str):
        turns = result.get("turns") or []
        return result["text"][:turns[-1][0]] if turns else result["text"]
    return result["input"]


def generate(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int, sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0) -> str:
    """``[bos] + tokens(prompt)`` continued by ``model.generate`` (KV cache), decoded without the prompt."""
    import torch

    model.set_attn_implementation("sdpa")  # fm9g eval's packed attention needs no cache; generation does
    model.config.use_cache = True
    device = next(model.parameters()).device
    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(prompt)]], dtype=torch.long, device=device)
    options: dict[str, Any] = {"do_sample": sample}
    if sample:
        options.update(temperature=temperature, top_p=top_p, top_k=top_k)
        torch.manual_seed(seed)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, use_cache=True,
                                **options)
    new = output[0, ids.shape[1]:].tolist()
    if new and new[-1] == tokenizer.eos_id:
        new = new[:-1]
    return tokenizer.decode(new)
