"""Where a number came from: the vaescope version and commit, the command line, the machine, torch.

Every results file (``results.json`` of ``reproduce``, ``inspect.json``, ``sweep.json``,
``stats-*.json``, ``bench --json``) carries :func:`provenance` under the key ``provenance``, and the
reports print :func:`describe` of it, so a figure read later says which code, command and machine
produced it.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../vaescope


def version() -> str:
    """The installed vaescope version (the package metadata), or ``unknown`` when not installed."""
    try:
        return metadata.version("vaescope")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def commit() -> str | None:
    """``git describe --always --dirty --tags`` of the checkout vaescope runs from, or None when
    it does not run from a git checkout (an installed wheel) or git is missing."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=PACKAGE_ROOT,
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and text else None


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """The CUDA devices torch sees (none on a CPU-only machine); does not initialise CUDA otherwise."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def command_line() -> str:
    """The command as the user typed it: ``vaescope ...`` for the console script, else argv."""
    argv = list(sys.argv)
    first = Path(argv[0]) if argv else None
    if first is not None and (first.name == "vaescope" or (first.name == "__main__.py" and first.parent.name == "vaescope")):
        argv[0] = "vaescope"  # the console script, or python -m vaescope (not another package's __main__)
    return " ".join(argv)


def provenance() -> dict[str, Any]:
    """The JSON block stored with every result: version, commit, command, machine, torch."""
    return {
        "vaescope": version(),
        "commit": commit(),
        "command": command_line(),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": gpu_names(),
            "platform": platform.platform(),
        },
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def describe(block: dict[str, Any]) -> str:
    """One line for a report: ``vaescope 0.2.0 (commit 1a2b3c4), `vaescope ...`, <cpu>, 2 threads, torch 2.13.0``."""
    machine = block.get("machine", {})
    gpu = ", ".join(machine.get("gpu") or []) or "no GPU"
    where = f" (commit {block['commit']})" if block.get("commit") else ""
    return (f"vaescope {block.get('vaescope', 'unknown')}{where}, `{block.get('command', '')}`, "
            f"{machine.get('cpu', 'unknown CPU')}, {machine.get('torch_threads', '?')} torch threads, {gpu}, "
            f"torch {block.get('torch', '?')}")
