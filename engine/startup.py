"""What a process does once at start-up, before llama.cpp loads: called by the entry points (the
``autoglm`` command and every engine child it starts, and ``from autoglm import Engine``), never
as a side effect of importing an engine module.

libgomp, the OpenMP runtime under llama.cpp's CPU kernels, reads ``OMP_WAIT_POLICY`` once, when
it is loaded. ``autoglm tune`` measures whether sleeping workers run faster here (a busy desktop)
and leaves its verdict in a file; the next process must put it in its environment before the
first import of llama.cpp. A planner cannot do it: planning needs the device probe, which loads
llama.cpp.
"""

from __future__ import annotations

import os

from autoglm.engine import paths

WAIT_POLICY_FILE = "omp-wait-policy"  # written by `autoglm tune` when sleeping workers measured faster


def apply_wait_policy() -> str:
    """Put the measured OpenMP wait policy in the environment (the user's own setting wins);
    returns the policy in effect, "passive" or "spin". Too late once llama.cpp is loaded."""
    if "OMP_WAIT_POLICY" not in os.environ:
        try:
            measured = (paths.cache_dir() / WAIT_POLICY_FILE).read_text().strip()
        except (OSError, ValueError):  # missing, unreadable or not text: a cache, so spin as by default
            measured = ""
        if measured == "PASSIVE":
            os.environ["OMP_WAIT_POLICY"] = measured
    return "passive" if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" else "spin"
