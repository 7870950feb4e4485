"""Typed (pydantic v2) models generated from ``schemas/``; see scripts/generate_models.py.

jsonschema (fm9g.core.schemas) is the authoritative validator; validate a document there first,
then ``Model.model_validate(document)`` for typed access.
"""

from fm9g.core.models.mix import MixManifest
from fm9g.core.models.meta import IndexMeta
from fm9g.core.models.train import TrainConfig
from fm9g.core.models.checkpoint import CheckpointManifest

GENERATOR_VERSION = "0.89.0"
"""The datamodel-code-generator version that produced these modules."""

__all__ = ["MixManifest", "IndexMeta", "TrainConfig", "CheckpointManifest", "GENERATOR_VERSION"]
