"""The ``torch`` trainer backend: its plugin (:mod:`.plugin`, light, what the registry imports) and
its part of the run sequence (:mod:`.training`: dtypes, FSDP2, AdamW, full state dicts)."""
