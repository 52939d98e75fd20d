"""``python -m idm_med`` runs the command-line interface."""

from .cli import main

main()
