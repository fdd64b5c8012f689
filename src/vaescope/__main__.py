"""``python -m vaescope`` runs the command line."""

from vaescope.cli import main

main()
