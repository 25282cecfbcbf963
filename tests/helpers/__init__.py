"""Helpers shared by the tests: tiny models, tiny Hugging Face checkpoints, image files,
script runs."""
