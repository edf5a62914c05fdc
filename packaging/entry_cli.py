"""``autoglm``: the headless bundle (CLI and server)."""

import sys

from entry import main

sys.exit(main([]))
