"""``python -m metarl``: the ``metarl`` command line (what ``torchrun -m metarl train CONFIG`` starts on every
rank)."""

import sys

from metarl import distributed
from metarl.cli import main

code = main()
if distributed.launched():  # a rank of a torchrun job: leave the group, then skip interpreter teardown
    distributed.exit_rank(code)
sys.exit(code)
