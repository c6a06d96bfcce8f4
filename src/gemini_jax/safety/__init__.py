"""Safety: a policy of harm categories, the requests it implies, and classifiers that flag them.

- policy.py: the policy file (YAML) and its checks; default_policy.yaml is the shipped one
- requests.py: every template x slot filling as a labelled request, split by template; red-team
  wrappers; refusal SFT examples
- classifier.py: one logistic regression per category on hashed n-grams, thresholds from validation
- evaluate.py: per-category precision, recall and F1
- train.py: what `gemini-jax safety train` runs

See docs/safety.md.
"""
