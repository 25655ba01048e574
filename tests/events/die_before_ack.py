"""``tenant-notify events consume`` that dies (SIGKILL) at its first acknowledgement.

That is the worst moment for a consumer to die: the event's notifications are
queued, and the broker never learns that the event was handled, so it delivers
the event again to the next consumer.
"""

from __future__ import annotations

import os
import signal
import sys

from kombu.message import Message


def _die(self: Message, *args: object, **kwargs: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


Message.ack = _die  # type: ignore[method-assign]

from tenant_notify.cli import main  # noqa: E402 - after the patch, as a process would be

sys.exit(main(sys.argv[1:]))
