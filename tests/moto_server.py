"""moto's server mode on loopback: an AWS emulator (SES, SNS) the Amazon providers talk to.

Usage::

    from tests.moto_server import MotoServer

    with MotoServer() as aws:
        ...point a provider's endpoint_url at aws.url...
        [raw] = aws.sent_raw_emails()
        aws.sns_sms()            # what SNS published to phone numbers

The server is moto's own (``python -m moto.server``) in a child process on a free
127.0.0.1 port; :meth:`MotoServer.reset` empties every emulated service between
tests. What arrived is read back through moto's ``/moto-api/data.json`` (every
model instance moto keeps, per service), and the tests set things up (a verified
sender) with boto3 against the same server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from types import TracebackType
from typing import Any

__all__ = ["ACCESS_KEY", "REGION", "SECRET_KEY", "MotoServer"]

REGION = "eu-west-1"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """moto's server mode in a child process on loopback."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> MotoServer:
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                raise RuntimeError(f"moto.server exited: {err[-2000:]}")
            try:
                self._get("/moto-api/data.json")
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto.server did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- control and read-back -------------------------------------------------------

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as reply:
            return bytes(reply.read())

    def reset(self) -> None:
        """Forget everything every emulated service holds (and turn IAM checks off)."""
        self.require_signatures(float("inf"))
        request = urllib.request.Request(self.url + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def require_signatures(self, after: float = 0) -> None:
        """Turn moto's IAM checks on: every request after the next ``after`` ones must
        be signed with an access key moto knows (``float("inf")`` turns them off)."""
        request = urllib.request.Request(
            self.url + "/moto-api/reset-auth",
            data=str(after).encode("ascii"),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would hide it from moto
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def data(self) -> dict[str, Any]:
        """moto's ``/moto-api/data.json``: service -> model -> instances."""
        return dict(json.loads(self._get("/moto-api/data.json")))

    def sent_raw_emails(self) -> list[dict[str, Any]]:
        """The raw MIME messages SES accepted (``source``, ``destinations``, ``raw_data``)."""
        return list(self.data().get("ses", {}).get("RawMessage", []))

    def sent_emails(self) -> list[dict[str, Any]]:
        """The simple (non-raw) messages SES accepted."""
        return list(self.data().get("ses", {}).get("Message", []))

    def sns_sms(self) -> list[dict[str, Any]]:
        """The SMS SNS published (``message_id``, ``phone_number``, ``message``)."""
        return list(self.data().get("sns", {}).get("SMS", []))

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` against this server (test set-up only)."""
        import boto3

        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
