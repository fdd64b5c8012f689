"""``python -m vaescope.cli``: the ``vaescope`` command."""

import sys

from vaescope.cli import main

sys.exit(main(prog_name="vaescope"))
