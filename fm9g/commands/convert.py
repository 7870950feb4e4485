"""``fm9g convert``: the seed's bmtrain ``.pt`` checkpoints <-> Hugging Face directories, and seed LoRA merges."""

from __future__ import annotations

import argparse
import sys

NAME = "convert"
HELP = "convert seed (bmtrain) .pt checkpoints to and from Hugging Face directories"
ORDER = 80


def _common(parser: argparse.ArgumentParser, *, shards: bool = True) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a config.json that needs the model's own Python code")
    if shards:
        parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)

    pt2hf = sub.add_parser("pt2hf", help="seed .pt (+ optional seed LoRA) -> HF directory",
                           description="seed .pt (+ optional seed LoRA) -> HF directory")
    pt2hf.add_argument("--input", required=True, metavar="SEED_PT")
    arch = pt2hf.add_mutually_exclusive_group(required=True)
    arch.add_argument("--preset", help="model preset (fm9g-7b, fm9g-8b, tiny-qwen2, ...)")
    arch.add_argument("--config", metavar="HF_DIR",
                      help="take the architecture from HF_DIR/config.json (and tokenizer files from HF_DIR)")
    pt2hf.add_argument("--output", required=True, metavar="HF_DIR")
    pt2hf.add_argument("--lora-ckpt", metavar="LORA_PT", help="a seed (OpenDelta) LoRA checkpoint to merge in")
    pt2hf.add_argument("--lora-config", metavar="JSON",
                       help="its train config (a 'finetune' block, or plain {lora_r, lora_alpha})")
    pt2hf.add_argument("--tokenizer", metavar="SPEC", help="tokenizer to write (byte, hf:DIR, sp:FILE.model)")
    pt2hf.add_argument("--dtype", choices=["keep", "float32", "bfloat16", "float16"], default="keep")
    _common(pt2hf)

    hf2pt = sub.add_parser("hf2pt", help="HF directory -> seed .pt", description="HF directory -> seed .pt")
    hf2pt.add_argument("--input", required=True, metavar="HF_DIR")
    hf2pt.add_argument("--output", required=True, metavar="SEED_PT")
    hf2pt.add_argument("--dtype", choices=["keep", "float32", "bfloat16", "float16"], default="keep",
                       help="the seed's hgface_2_bmtrain.py writes bfloat16; default keeps the stored dtype")
    _common(hf2pt, shards=False)

    merge = sub.add_parser("merge-lora", help="fold a seed LoRA into a seed .pt (-> .pt) or an HF dir (-> HF dir)",
                           description="fold a seed LoRA into a seed .pt (-> .pt) or an HF dir (-> HF dir)")
    merge.add_argument("--base", required=True, metavar="SEED_PT|HF_DIR")
    merge.add_argument("--lora-ckpt", required=True, metavar="LORA_PT")
    merge.add_argument("--lora-config", required=True, metavar="JSON")
    merge.add_argument("--output", required=True, metavar="OUT")
    _common(merge)


def run(args: argparse.Namespace) -> int:
    from fm9g.backends.export.convert import convert_hf_to_pt, convert_merge_lora, convert_pt_to_hf

    if args.direction == "pt2hf":
        report = convert_pt_to_hf(
            args.input, args.output, preset=args.preset, config_dir=args.config, lora_ckpt=args.lora_ckpt,
            lora_config=args.lora_config, tokenizer=args.tokenizer, force=args.force,
            max_shard_size=args.max_shard_size, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    elif args.direction == "hf2pt":
        report = convert_hf_to_pt(args.input, args.output, force=args.force, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code)
    else:
        report = convert_merge_lora(args.base, args.lora_ckpt, args.lora_config, args.output, force=args.force,
                                    max_shard_size=args.max_shard_size, trust_remote_code=args.trust_remote_code)
    print(f"wrote {report.kind} to {report.output}")
    for note in report.notes:
        print(f"  {note}", file=sys.stderr)
    return 0
