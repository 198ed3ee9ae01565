"""The benchmarks of ``make bench``: run from the repository root as ``python -m bench.<name>``."""
