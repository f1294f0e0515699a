"""``python -m torchblocks`` runs the ``torchblocks`` command."""
from .cli import main

raise SystemExit(main())
