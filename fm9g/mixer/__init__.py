"""Mixing: manifest, transforms, samples, scheduler, permutations, packing, the global stream.

Entry points: :func:`fm9g.mixer.manifest.load_manifest`, :class:`fm9g.mixer.stream.MixtureStream`
(packed batches on the fly, with O(1) resumable state) and
:class:`fm9g.mixer.materialized.MaterializedStream` (batches written by ``fm9g mix --output``).
"""
