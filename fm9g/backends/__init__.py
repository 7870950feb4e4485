"""Training and everything around it, in rooms by concern, imports running down this list:

* ``torch_backend``, ``bmtrain_backend``, ``export`` — the two trainer backends (each a plugin and
  its part of the run sequence) and ``fm9g export`` / ``fm9g convert``; none imports another;
* ``training`` — what both backends share: the train config, the run sequence and its output,
  batches, the loop and loss, the LR schedule, metrics, checkpoints, resume, optimizer state;
* ``lora`` — the delta (LoRA) engines, PEFT and OpenDelta, and the merge arithmetic;
* ``models`` — building a model: presets, packed attention, fused kernels, materializing weights;
* ``weights`` — weight files (seed ``.pt``, safetensors, HF directories) and parameter names.

The rules are import-linter contracts in ``pyproject.toml`` (``lint-imports``), checked by the tests.
"""
