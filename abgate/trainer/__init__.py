"""The trainer service (issue #16): retrain requests in PostgreSQL -> registered models ->
the next round (``trainer.core``, ``trainer.service``, ``trainer.cli``)."""
