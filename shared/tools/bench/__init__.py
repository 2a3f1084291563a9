"""The benchmarks, one module per thing measured: turns through the topologies beside a bare
Celery chord (`chordline bench`), the same over the HTTP API, many tenants on one fleet,
recovery after a killed worker, the knowledge base, and re-scoring; with the CPU time and
the hop-by-hop overhead they report."""
