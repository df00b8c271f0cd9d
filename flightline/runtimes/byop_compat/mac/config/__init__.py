"""Configuration objects handed to an InferenceBuilder."""
