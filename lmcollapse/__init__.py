"""lmcollapse: model collapse in language models, generation after generation.

Generation 0 fine-tunes a causal LM on human text; every later generation trains on text written
by the one before it; every generation is measured on held-out human text, for diversity and for
its tails. README.md has the commands, the pipelines, the outputs and a map of these modules.
"""

from lmcollapse.errors import ConfigError, LmcollapseError

__version__ = "0.1.0"
__all__ = ["ConfigError", "LmcollapseError", "__version__"]
