"""Conversion between other checkpoint formats and gemini-jax run directories."""
