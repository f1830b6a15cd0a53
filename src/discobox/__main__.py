"""``python -m discobox`` (also what ``torchrun -m discobox`` runs)."""

import sys

from .cli import main

sys.exit(main())
