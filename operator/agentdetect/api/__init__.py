"""The API: the profile and detection models (the CRDs are generated from them), the catalog
of providers and presets, and the condition types and reasons profiles report."""
