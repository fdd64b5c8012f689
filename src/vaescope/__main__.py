"""``python -m vaescope`` runs the command line."""

from .cli import main

main()
