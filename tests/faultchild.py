"""Runs ``vaescope`` with one fault point armed, for the fault tests (never imported by vaescope).

``python faultchild.py POINT MARKER vaescope-args...``. When the child reaches POINT it writes its
PID to MARKER and sleeps; the test then kills it with SIGKILL, so the kill lands at exactly that
moment. Points:

    step:N              before the N-th training step (counted over the whole run)
    partial:NAME[@K]    half of the K-th atomic write of NAME is in its temporary file
    renamed:NAME[@K]    the K-th write of NAME has just been renamed into place
    none                no fault (the uninterrupted reference run)

``python faultchild.py POINT MARKER tiny-reproduce NPZ OUT [--wait]`` runs instead a tiny
``reproduce`` (:func:`tiny_reproduce_settings`, the steps of :data:`TINY_REPRODUCE_STEPS`) into OUT.
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

        import vaescope.training.engine as train_mod
        from vaescope.models import objectives

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

    if args[:1] == ["tiny-reproduce"]:
        from vaescope.cli import _configure_logging
        from vaescope.reproduce import reproduce

        _configure_logging()  # progress lines to stderr, as the command prints them
        settings, steps = tiny_reproduce_settings(args[1])
        reproduce(settings, args[2], steps=steps, wait="--wait" in args)
        return 0

    from vaescope.cli import main as cli

    return cli(args, prog_name="vaescope")


# The steps of a tiny reproduce that the kill tests run: every model trained, then what is
# computed from all of them (the other steps are covered by tests/test_reproduce.py).
TINY_REPRODUCE_STEPS = ("train", "table1", "generation", "reconstruction-gain")


def tiny_reproduce_settings(npz: str | os.PathLike[str]):
    """Settings and steps of a tiny ``reproduce`` on NPZ: 2 seeds of the three models, 2 epochs of
    tiny nets (8 steps an epoch). The dense runs train first, together (one batched computation,
    which ``step:N`` does not count); then conv16 one run at a time: seed 0 trains steps 1-16,
    seed 1 steps 17-32."""
    from conftest import TINY_OVERRIDES

    from vaescope.reproduce import default_steps, make_settings

    overrides = tuple(o for o in TINY_OVERRIDES if not o.startswith("train.epochs"))
    settings = make_settings(quick=True, seeds=2, overrides=overrides, data_source=str(npz),
                             epochs={"dense16": 2, "dense16_no_kl": 2, "conv16": 2},
                             generation_samples=50, progress=False)
    return settings, [s for s in default_steps(settings) if s.id in TINY_REPRODUCE_STEPS]


if __name__ == "__main__":
    sys.exit(main())
