"""Named points in a job's life where a crash can be provoked on purpose (fault testing).

The watcher promises that a ``kill -9`` at any moment loses nothing and duplicates
nothing. To test that at every step and not only where a timer happens to land, the
service passes through :func:`checkpoint` at each :class:`Point`; when the environment
variable ``PENGWIN_WATCHER_KILL_AT`` names that point, the process sends itself SIGKILL
there (no clean-up of any kind runs, exactly as with ``kill -9``). Unset, a checkpoint
costs one dictionary look-up.
"""

from __future__ import annotations

import enum
import os
import signal

ENV = "PENGWIN_WATCHER_KILL_AT"


class Point(str, enum.Enum):
    """Where a job can be interrupted (the value is what ``PENGWIN_WATCHER_KILL_AT`` names)."""

    ARRIVAL = "arrival"  # an item has settled, nothing claimed yet
    CLAIM = "claim"  # part of the item moved into the job folder
    CLAIMED = "claimed"  # claimed and recorded, not started
    SPLIT = "split"  # a delivery of several series: some child jobs made
    OUTPUTS = "outputs"  # outputs written into the hidden temp folder, job.json not yet
    PUBLISH = "publish"  # job.json written, the temp folder not yet renamed into the outbox
    PUBLISHED = "published"  # result in the outbox, input not yet removed
    # pipeline stages are "stage:<name>" with the names of pengwin_demo.pipeline.STAGES


def checkpoint(point: Point | str) -> None:
    """SIGKILL this process when ``$PENGWIN_WATCHER_KILL_AT`` names ``point``."""
    wanted = os.environ.get(ENV)
    if wanted and wanted == (point.value if isinstance(point, Point) else point):
        os.kill(os.getpid(), signal.SIGKILL)
