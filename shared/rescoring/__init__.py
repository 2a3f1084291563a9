"""Batch re-scoring of historical turns: what would the orchestrator, the researcher and the
routing decide now, against the current knowledge base and a run's overridden settings.

A run is a row in ``rescore_runs`` and one row per selected turn in ``rescore_results``.
Celery tasks on the ``rescoring`` queue score the run's turns in batches and write only to
``rescore_results``; live turn rows are read, never written.
"""
