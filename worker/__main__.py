"""``python -m worker`` runs the command line."""

import sys

from worker.cli import main

sys.exit(main())
