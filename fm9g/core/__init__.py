"""Plugin system, schemas and validation, protocols and errors shared by every pipeline stage."""
