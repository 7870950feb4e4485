"""Building models: presets (the FM9G shapes and tiny test shapes), fm9g's packed varlen attention,
fused kernels (Liger), the model a train config names, and models materialized from given weights."""
