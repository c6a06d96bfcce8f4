"""`python -m gemini_jax.cli`: the command without its huge-pages restart."""

import sys

from gemini_jax.cli import main

sys.exit(main())
