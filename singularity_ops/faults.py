"""Named pause points for the fault-injection tests: kill -9 at a known line, for real.

`pause_point("restore:between-renames")` does nothing unless the environment variable
SINGULARITY_TEST_PAUSE names that point. Then it writes its name and pid to the file named by
SINGULARITY_TEST_PAUSE_FILE (so the test knows the process got there) and sleeps until it is
killed. Nothing but the tests sets these variables.
"""

from __future__ import annotations

import os
import time
from typing import Any

PAUSE_VARIABLE = "SINGULARITY_TEST_PAUSE"
PAUSE_FILE_VARIABLE = "SINGULARITY_TEST_PAUSE_FILE"
# Names a point where the process SIGKILLs the child it is running (pg_dump, say) and goes
# on: how the tests see a child die mid-work without racing to find it in /proc.
KILL_CHILD_VARIABLE = "SINGULARITY_TEST_KILL_CHILD"


def pause_point(name: str, child: Any = None) -> None:
    """Stop here forever when the tests asked for this point; otherwise return at once.
    With `child` (a subprocess.Popen), SINGULARITY_TEST_KILL_CHILD=name kills it instead."""
    if child is not None and os.environ.get(KILL_CHILD_VARIABLE) == name:
        child.kill()  # SIGKILL to the real process, then this one carries on
        child.wait()
        return
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
