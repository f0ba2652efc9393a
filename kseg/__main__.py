"""``python -m kseg <command> ...``: the same as the ``kseg`` console script."""

import sys

from kseg.cli import main

sys.exit(main())
