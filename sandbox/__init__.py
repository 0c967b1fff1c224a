"""Local stand-ins for the external user APIs, for tests, demos and benchmarks.

Each API lives in its own module (``sandbox.intra42``, ...) and builds a FastAPI app on top of the
shared pieces in ``sandbox.common``: rate limiting, fault injection, stats, control endpoints and
``serve()``. Run one from the command line with ``python -m sandbox <api> --help``.
"""
