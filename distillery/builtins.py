"""Distillery's own plugin: the built-in student kinds, teacher backends, calibration modes and active
strategies register where they are implemented, and this module imports those modules.

pyproject.toml declares it as the ``distillery`` entry point of the ``distillery.plugins`` group,
the same way a plugin package declares its own (docs/extending.md); ``distillery.core.registry``
loads it the first time a registry is read.
"""

from distillery.active import strategies  # noqa: F401  (random, margin, entropy, diverse)
from distillery.annotate import backends, calibration  # noqa: F401  (local, openai; none, mean, gold, ...)
from distillery.student import kinds  # noqa: F401  (encoder, llama-lora)
