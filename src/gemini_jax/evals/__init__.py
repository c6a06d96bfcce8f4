"""Evaluation: the report's protocols (`protocols`), answer metrics (`metrics`), benchmark tasks
read from their published layouts (`tasks`) and run on a checkpoint (`model`, `benchmark`), an
lm-evaluation-harness adapter (`lm_eval_adapter`, optional), HumanEval (`humaneval`) in a process
sandbox (`sandbox`), the demo's held-out tasks and log-likelihood scoring."""
