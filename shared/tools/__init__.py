"""What serves people at a terminal or measures: the `chordline` command, the benchmarks and
their synthetic data, the local stack, the reports and the demo.

The domain (everything else in ``shared``) and ``workers`` never import this package; it
imports them (held by `make lint`, ``[tool.importlinter]`` in pyproject.toml).
"""
