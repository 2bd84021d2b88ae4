"""`python -m emovae`: see emovae.cli."""

from emovae.cli import main

raise SystemExit(main())
