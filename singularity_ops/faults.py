"""Named pause points for the fault-injection tests: kill -9 at a known line, for real.

`pause_point("restore:between-renames")` does nothing unless the environment variable
SINGULARITY_TEST_PAUSE names that point. Then it writes its name and pid to the file named by
SINGULARITY_TEST_PAUSE_FILE (so the test knows the process got there) and sleeps until it is
killed. Nothing but the tests sets these variables.
"""

from __future__ import annotations

import os
import time

PAUSE_VARIABLE = "SINGULARITY_TEST_PAUSE"
PAUSE_FILE_VARIABLE = "SINGULARITY_TEST_PAUSE_FILE"


def pause_point(name: str) -> None:
    """Stop here forever when the tests asked for this point; otherwise return at once."""
    if os.environ.get(PAUSE_VARIABLE) != name:
        return
    marker = os.environ.get(PAUSE_FILE_VARIABLE)
    if marker:
        tmp = f"{marker}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{name} {os.getpid()}\n")
        os.replace(tmp, marker)
    while True:
        time.sleep(60)
