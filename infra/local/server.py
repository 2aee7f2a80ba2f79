"""moto as a server in this process, on 127.0.0.1, running state machines for real.

The in-process handlers, the worker subprocesses and the real AWS CLI all reach it through
``AWS_ENDPOINT_URL``. Fake credentials exist only while the server runs (``environment``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

from infra.local import moto_patches

LOG = logging.getLogger(__name__)

LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account
LOCAL_CREDENTIAL = "saeflow-local"


class LocalServer:
    """A ThreadedMotoServer with Step Functions execution switched on."""

    def __init__(self, port: int = 0) -> None:
        self._requested_port = port
        self._server: Any = None
        self.port: int | None = None

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the local server is not running")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(
            ip_address="127.0.0.1", port=self._requested_port, verbose=False
        )
        self._server.start()
        self.port = int(self._server.get_host_and_port()[1])
        self._prepare_backends()
        LOG.info("local AWS endpoint on %s", self.endpoint_url)
        return self.endpoint_url

    def _prepare_backends(self) -> None:
        # moto's backends are process-wide: a second stack in this process starts empty.
        _post_json(f"{self.endpoint_url}/moto-api/reset", {})
        # Server mode reads its config from this endpoint (mock_aws(config=...) is for the
        # decorator). Lambda keeps moto's Docker backend class, whose invoke is the one
        # moto_patches replaces (use_docker=False would select a canned-answer backend).
        _post_json(
            f"{self.endpoint_url}/moto-api/config",
            moto_patches.enable_state_machine_execution_config(),
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            self.port = None

    def environment(self) -> dict[str, str]:
        """What a process needs to talk to this server and only to it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIAL,
            "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIAL,
            "AWS_DEFAULT_REGION": LOCAL_REGION,
            "AWS_REGION": LOCAL_REGION,
            # moto's Step Functions interpreter builds its own clients on this port.
            "MOTO_PORT": str(self.port),
        }


class PublicEndpoint(LocalServer):
    """The port users (the AWS CLI) talk to, opened only once the stack is ready.

    moto's backends are process-wide, so a second server in this process serves the very
    same state as the internal one the stack was built through (it must not reset or
    configure them); until this one listens, a client gets "connection refused", never an
    empty or half-restored bucket.
    """

    def _prepare_backends(self) -> None:
        pass


@contextlib.contextmanager
def process_environment(values: Mapping[str, str], drop: tuple[str, ...] = ()) -> Iterator[None]:
    """Set ``values`` (and remove ``drop``) in os.environ, restoring both afterwards."""
    keys = set(values) | set(drop)
    saved = {k: os.environ.get(k) for k in keys}
    for key in drop:
        os.environ.pop(key, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Real credentials and profiles must not leak into the local stack's clients.
CREDENTIAL_VARIABLES_TO_DROP = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


def _post_json(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
