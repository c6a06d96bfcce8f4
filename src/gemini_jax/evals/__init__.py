"""Evaluation: the demo's held-out tasks and log-likelihood scoring; the report's protocols
(`protocols`), answer metrics (`metrics`), HumanEval (`humaneval`) run in a process sandbox
(`sandbox`)."""
