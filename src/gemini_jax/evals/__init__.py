"""Evaluation: the demo's held-out tasks and log-likelihood scoring."""
