"""A fault point armed in every Python process that starts with ``VAESCOPE_TEST_FAULT`` set.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``, so the point reaches the
processes a command spawns (a sweep's workers) as well as the command itself. Never imported by
vaescope. ``VAESCOPE_TEST_FAULT="NAME|RUN|K|MARKER"``: right after the K-th write of the file NAME
inside the run directory RUN is renamed into place, the process writes its PID to MARKER and
sleeps until the test kills it, so the kill lands at exactly that moment.
"""

import os
import time

_spec = os.environ.get("VAESCOPE_TEST_FAULT")
if _spec:
    _name, _run, _nth, _marker = _spec.split("|")
    _real_replace = os.replace
    _seen = [0]

    def _replace(src, dst, *args, **kwargs):
        _real_replace(src, dst, *args, **kwargs)
        path = os.fspath(dst)
        if os.path.basename(path) == _name and f"{os.sep}{_run}{os.sep}" in path:
            _seen[0] += 1
            if _seen[0] == int(_nth):
                with open(_marker, "w") as handle:
                    handle.write(str(os.getpid()))
                time.sleep(600)

    os.replace = _replace
