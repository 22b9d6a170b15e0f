"""Named crash points for crash-safety tests.

With ``VOUCH_FAULT=<point>`` in the environment, the process kills itself with SIGKILL when it
reaches that point, as a power cut or OOM kill would: no cleanup, no flush. Tests run real
``vouch`` processes this way and then check that the records are whole. Unset, it costs one
comparison.
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("VOUCH_FAULT")


def checkpoint(point: str) -> None:
    if _ARMED is not None and point == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
