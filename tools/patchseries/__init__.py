"""Tooling for the Gemma 4 serving patch series.

One module per concern: ``git`` (project-agnostic git plumbing), ``series``
(series.yaml and its schema), ``package_index`` (the PyPI index pip uses),
``upstream_cache`` (upstream releases materialized as git history),
``engine`` (applying patches to a git tree and classifying the outcome),
``installed`` (patching an installed package with backup and undo),
``report`` (tables and JSON).  The commands in ``tools/*.py`` are thin.
"""
