"""``python -m sparsebench``: the same entry point as the ``sparsebench`` console script."""

import sys

from sparsebench.cli import main

sys.exit(main())
