"""Plugin system, schemas and validation, protocols, errors, atomic output and text helpers shared by every stage."""
