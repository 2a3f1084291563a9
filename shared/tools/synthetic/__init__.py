"""Generated data for the benchmarks and the tests: product documentation for the knowledge
base (kb.py) and a finished conversation history for re-scoring (rescoring.py)."""
