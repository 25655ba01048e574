"""One sending process of test_limits_redis: ``python -m tests.integration.limits_sender
SETTINGS_JSON GO_FILE COUNT``.

Builds a Celery-transport Notifier from the settings, waits for the go file (so the
processes send at the same time), sends COUNT emails as fast as it can, and prints
one JSON line: the receipts it got and the RateLimitedErrors it was refused with.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tenant_notify import Notifier, RateLimitedError


def main() -> None:
    settings = json.loads(Path(sys.argv[1]).read_text())
    go, count = Path(sys.argv[2]), int(sys.argv[3])
    accepted: list[str] = []
    refused: list[dict[str, object]] = []
    with Notifier.from_settings(settings) as notify:
        print(json.dumps({"ready": True}), flush=True)
        deadline = time.monotonic() + 60
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit("no go file")
            time.sleep(0.005)
        for i in range(count):
            try:
                receipt = notify.send_email(
                    to_email=f"user{i}@example.com", subject="s", body="b", tenant_id="acme"
                )
            except RateLimitedError as err:
                refused.append({"limit": err.limit, "retry_after": err.retry_after})
            else:
                accepted.append(receipt.id)
        notify.transport.flush(10)
    print(json.dumps({"accepted": accepted, "refused": refused}), flush=True)


if __name__ == "__main__":
    main()
