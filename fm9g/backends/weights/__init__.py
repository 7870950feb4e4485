"""Weight files and parameter names: seed ``.pt``, safetensors and Hugging Face directories read and
written with clear errors (:mod:`.files`), and the seed's bmtrain names <-> HF names, LoRA key
formats included (:mod:`.names`). The lowest room of ``fm9g.backends``: it imports no other."""
