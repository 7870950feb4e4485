"""``fm9g export`` (a training checkpoint -> a Hugging Face directory) and ``fm9g convert`` (seed
``.pt`` <-> HF, seed LoRA merges): reading checkpoints, writing outputs and tokenizer files."""
