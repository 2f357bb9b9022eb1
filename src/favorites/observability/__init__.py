"""Logs, metrics and traces: wired once at start-up, used through small helpers.

- ``setup``: ``setup(settings)`` configures JSON logging and tracing for the process and returns
  the ``Observability`` the app's lifespan starts and stops (and that serves ``/metrics``).
- ``middleware``: the one ASGI middleware that logs, counts and traces every request.
- ``operations``: the business-operation line and counter around each use case.
- ``metrics``: the metric catalogue and helpers (``record_rate_limited``, ``record_cache_request``,
  ``set_circuit_breaker_state``); ``exposition``: ``/metrics`` for one worker or many.
- ``tracing``: W3C propagation (``inject_headers``), ``cache_span``; ``sampling``: the tail rule.
- ``db``: statement timings, spans and pool gauges from SQLAlchemy engine events.
- ``logs`` and ``redaction``: the JSON line format and the secret scrubbing behind it.

Submodules are imported explicitly (``from favorites.observability import metrics``); this package
imports nothing itself, so any layer can use a helper without pulling in the rest.
"""
