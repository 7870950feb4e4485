"""``fm9g export``: a training checkpoint -> a Hugging Face directory (full, merged LoRA, or adapter)."""

from __future__ import annotations

import argparse
import sys

NAME = "export"
HELP = "export a training checkpoint to a Hugging Face directory (optionally merging LoRA)"
ORDER = 70


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a step-NNNNNNNN checkpoint directory")
    parser.add_argument("--output", required=True, metavar="HF_DIR", help="the directory to write")
    parser.add_argument("--merge-lora", action="store_true",
                        help="fold the LoRA adapter into the base weights (W + alpha/r * B@A)")
    parser.add_argument("--format", dest="fmt", choices=["peft", "opendelta"], default="peft",
                        help="unmerged LoRA: PEFT's adapter files (default) or the seed's OpenDelta "
                             "keys (opendelta_lora.pt + lora_config.json)")
    parser.add_argument("--base", metavar="PATH",
                        help="LoRA base weights (HF dir, seed .pt or .safetensors) instead of the train config's")
    parser.add_argument("--tokenizer", metavar="SPEC",
                        help="tokenizer to write (byte, hf:DIR, sp:FILE.model); default: the checkpoint's")
    parser.add_argument("--dtype", choices=["keep", "float32", "bfloat16", "float16"], default="keep",
                        help="weight dtype of the exported model (default: as stored)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--force", action="store_true", help="replace an output directory fm9g wrote")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model config that needs its own Python code (auto_map); never taken from "
                             "the checkpoint itself")


def run(args: argparse.Namespace) -> int:
    from fm9g.backends.export.export import export_checkpoint

    report = export_checkpoint(
        args.checkpoint, args.output, merge_lora=args.merge_lora, fmt=args.fmt, force=args.force,
        max_shard_size=args.max_shard_size, dtype=args.dtype, base=args.base, tokenizer=args.tokenizer,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"wrote {report.kind} to {report.output}: {', '.join(report.files())}")
    for note in report.notes:
        print(f"  {note}", file=sys.stderr)
    return 0
