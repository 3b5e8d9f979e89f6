"""``python -m sparsebench``: the same entry point as the ``sparsebench`` console script."""

import sys

from sparsebench.pipeline.cli import main

sys.exit(main())
