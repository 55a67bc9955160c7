"""``python -m metarl``: the ``metarl`` command line (what ``torchrun -m metarl train CONFIG`` starts on every
rank)."""

import sys

from metarl.cli import main

sys.exit(main())
