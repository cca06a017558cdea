"""Integration tests: whole-engine sequences on default-constructed models."""
