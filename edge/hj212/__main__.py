"""``python -m edge.hj212``: the same as ``vigil edge hj212`` (``edge.hj212.cli``)."""

import sys

from edge.hj212.cli import main

sys.exit(main())
