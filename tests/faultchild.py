"""Runs ``vaescope`` with one fault point armed, for the fault tests (never imported by vaescope).

``python faultchild.py POINT MARKER vaescope-args...``. When the child reaches POINT it writes its
PID to MARKER and sleeps; the test then kills it with SIGKILL, so the kill lands at exactly that
moment. Points:

    step:N              before the N-th training step (counted over the whole run)
    partial:NAME[@K]    half of the K-th atomic write of NAME is in its temporary file
    renamed:NAME[@K]    the K-th write of NAME has just been renamed into place
    none                no fault (the uninterrupted reference run)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    point, marker, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    kind, _, spec = point.partition(":")
    name, _, nth = spec.partition("@")
    wanted = int(nth or 1)
    seen = {"n": 0}

    def reached() -> None:
        marker.write_text(str(os.getpid()))
        time.sleep(600)  # the test kills us here

    def counts() -> bool:
        seen["n"] += 1
        return seen["n"] == wanted

    if kind == "step":
        import torch

        import vaescope.engine as train_mod
        from vaescope import objectives

        real = objectives.loss_terms

        def counting(*a, **k):
            if torch.is_grad_enabled():  # training steps, not evaluation
                seen["n"] += 1
                if seen["n"] == int(spec):
                    reached()
            return real(*a, **k)

        objectives.loss_terms = counting
        train_mod.loss_terms = counting
    elif kind == "partial":
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, handle):
                self._handle = handle

            def write(self, data):
                self._handle.write(data[: len(data) // 2])
                self._handle.flush()
                reached()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._handle.__exit__(*exc)

            def __getattr__(self, attr):
                return getattr(self._handle, attr)

        def fdopen(fd, *a, **k):
            handle = real_fdopen(fd, *a, **k)
            target = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            if target.startswith(f".{name}.") and counts():
                return HalfWriter(handle)
            return handle

        os.fdopen = fdopen
    elif kind == "renamed":
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            real_replace(src, dst, *a, **k)
            if os.path.basename(dst) == name and counts():
                reached()

        os.replace = replace
    elif kind != "none":
        raise SystemExit(f"unknown fault point {point!r}")

    from vaescope.cli import main as cli

    return cli(args, prog_name="vaescope")


if __name__ == "__main__":
    sys.exit(main())
