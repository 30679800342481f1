"""``python -m ftransfer`` runs the CLI."""

from .cli import main

raise SystemExit(main())
