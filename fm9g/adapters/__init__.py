"""Built-in dataset adapters (txt, jsonl); more come as plugin packages (plugins/)."""
