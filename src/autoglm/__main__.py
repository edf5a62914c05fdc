"""``python -m autoglm``: the same as the ``autoglm`` command."""

import sys

from autoglm.engine.cli import main

sys.exit(main())
