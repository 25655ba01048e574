"""examples/docker-compose.yml's topology on this machine's RabbitMQ and Redis.

Docker cannot run here, so the compose file is kept correct by reading; this test
runs what its services run: a worker and the example app (examples/celery/send.py)
from the example's own settings file, with only the addresses changed through the
environment, as the compose file changes them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.conftest import AMQP_URL, REDIS_URL, ROOT, Worker, _cleanup

pytestmark = pytest.mark.integration


def test_the_example_app_and_worker_deliver(services, smtp, run_id, tmp_path):
    smtp.clear()
    queue = f"tn_example_{run_id}"
    env = {
        "TENANT_NOTIFY_CONFIG_FILE": str(ROOT / "examples" / "celery" / "tenant-notify.toml"),
        "CELERY_BROKER_URL": AMQP_URL,
        "CELERY_RESULT_BACKEND": REDIS_URL,
        "TENANT_NOTIFY_CELERY__QUEUE": queue,
        "TENANT_NOTIFY_CELERY__DEAD_LETTER_QUEUE": f"{queue}.dead",
        "TENANT_NOTIFY_REDIS__KEY_PREFIX": f"tn_example:{run_id}:",
        "TENANT_NOTIFY_EMAIL__HOST": "127.0.0.1",
        "TENANT_NOTIFY_EMAIL__PORT": str(smtp.port),
    }
    worker = Worker(ROOT / "examples" / "celery" / "tenant-notify.toml", tmp_path, run_id, env)
    worker.start()
    try:
        app_env = {**os.environ, **env, "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run(
            [sys.executable, "examples/celery/send.py"],
            env=app_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr + worker.log()
        assert done.stdout.count(" sent ") == 3
        senders = sorted(str(m.message["From"]) for m in smtp.wait_for(2, timeout=10))
        assert senders == ["Acme Shop <orders@acme.test>", "Globex Café <hello@globex.test>"]
    finally:
        worker.stop()
        _cleanup(
            {
                "celery": {"queue": queue, "dead_letter_queue": f"{queue}.dead"},
                "redis": {"key_prefix": f"tn_example:{run_id}:"},
            }
        )
