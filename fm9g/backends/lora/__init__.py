"""Delta tuning: the ``peft`` and ``opendelta`` LoRA engines (plugins), the bridge that lets OpenDelta
0.3.2 import on today's transformers, what both engines share, and the LoRA merge arithmetic."""
