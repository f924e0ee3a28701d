"""``python -m botd.demo``: the same as ``botd demo``."""

import sys

from .command import main

sys.exit(main())
