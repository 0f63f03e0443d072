"""``python -m lab.cli``: the same as the ``ucvm-lab`` command."""

import sys

from lab.cli import main

sys.exit(main())
