"""Gen4Gen core: plain functions for images, geometry, captions and checks.

Nothing here imports Dagster or a deep-learning framework at module level, so the
functions are cheap to import in every Dagster step process and easy to test.
"""
__version__ = "0.1.0"
