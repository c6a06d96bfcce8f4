"""Training: optimizer, the compiled training loop, metrics and the loss curve."""
