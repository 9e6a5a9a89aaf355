"""``python -m abgate`` runs the CLI."""

import sys

from abgate.cli import main

sys.exit(main())
