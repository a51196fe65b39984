"""Benchmarks. Run from the repo root as ``python -m bench.NAME`` (e.g. ``python -m bench.maze_env``).

A script run as a file (``python bench/maze_env.py``) would put ``bench/`` first on ``sys.path`` and shadow
the packages it measures (``maze_env``, ``probes``, ``steering``); each script starts with
``bench._path.fix()`` semantics inline to avoid that.
"""
