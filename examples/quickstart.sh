#!/usr/bin/env bash
# The README's main job on bundled data: prepare raw files into records, index them, plan and run
# the mixture, then train a tiny model on it for a few dozen steps on the CPU. Outputs go to
# examples/work/ (ignored by git); rerunning starts fresh.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf work && mkdir -p work

fm9g plugins
fm9g prepare --adapter txt        --input raw/pretrain.txt   --output work/prepared/pretrain --split test=0.05 --seed 3014
fm9g prepare --adapter alpaca     --input raw/alpaca_zh.json --output work/prepared/alpaca  --split test=0.05 --seed 3014
fm9g prepare --adapter medical-o1 --input raw/medical_o1.json --output work/prepared/medical --split test=0.05 --seed 3014 --option language=zh
fm9g prepare --adapter sharegpt   --input raw/chat_sharegpt.json --output work/prepared/chat --split test=0.05 --seed 3014

# each --split test.jsonl beside train.jsonl is indexed too, at work/idx/NAME/test: fm9g train evaluates on it
fm9g index --input work/prepared/pretrain/train.jsonl --output work/idx/pretrain --language zh --tokenizer byte
fm9g index --input work/prepared/alpaca/train.jsonl   --output work/idx/alpaca   --language zh --tokenizer byte
fm9g index --input work/prepared/medical/train.jsonl  --output work/idx/medical  --language zh --tokenizer byte
fm9g index --input work/prepared/chat/train.jsonl     --output work/idx/chat     --language zh --tokenizer byte

fm9g validate mix.json
fm9g mix --manifest mix.json --samples 2000 --preview 2 --plot work/mix.png --report work/mix_report.json
# multi-turn conversations (messages records) mixed with single-turn Alpaca records, both through chatml
fm9g mix --manifest mix_chat.json --samples 500 --preview 1 --preview-tokens 24 --report work/mix_chat_report.json
fm9g train --config train.json      # held-out loss per task every 10 steps (eval_iters), on the test splits
fm9g export --checkpoint work/run/step-00000040 --output work/hf --tokenizer byte
fm9g eval --model work/hf --manifest mix.json --report work/eval.json   # the step-40 figures, from the export
