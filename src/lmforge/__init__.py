"""lmforge: raw text to a served language model.

Kept import-light on purpose: the serving path imports `lmforge.tasks` and must not
pull in torch or transformers.
"""

__version__ = "0.1.0"
