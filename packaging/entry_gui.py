"""``AutoGLM``: the desktop bundle; with no arguments it opens the window."""

import sys

from entry import main

sys.exit(main(["gui"]))
