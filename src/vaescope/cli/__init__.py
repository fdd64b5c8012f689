"""The ``vaescope`` command line: parses arguments and calls the library, nothing else.

``group`` holds the command group and its error handling; each other module adds its commands to it:
``runs`` (train, stats, inspect, verify, presets), ``studies`` (reproduce, sweep, prune, dimension,
generate, score, objectives), ``bench``.
"""

from vaescope.cli import bench, runs, studies  # noqa: F401  (each registers its commands on main)
from vaescope.cli.group import _configure_logging, main

__all__ = ["_configure_logging", "main"]
