"""Sampling: choosing tokens and generating text against a KV cache."""
