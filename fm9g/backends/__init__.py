"""Trainer backends, delta (LoRA) engines, model presets and loading, attention, checkpoints, conversions."""
