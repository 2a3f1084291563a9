"""`chordline demo`: a scripted sales conversation (conversation.py) with a fictional
product's knowledge base (demo_kb/), which the benchmarks and the tests ingest too."""
