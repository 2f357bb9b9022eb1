"""The project's benchmark: bulk seeding, an open/closed-loop load generator and the runner.

``make bench`` (``python -m bench.run``) is the one command; see ``bench/README.md``.
"""
