"""Graceful, bounded shutdown for the server: on SIGTERM (or Ctrl-C) stop accepting, let
in-flight requests finish, and exit within `serving.shutdown_seconds` whatever is still running.

uvicorn alone stops accepting and cancels the request tasks after its graceful timeout, but a
model call already running in a worker thread cannot be cancelled, and the interpreter joins
those threads before it exits: a long TensorFlow call would keep the process alive past the
pod's grace period. A watchdog ends the process at the deadline instead.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)

# uvicorn gets this share of the budget to answer and close connections; the rest is margin
# for the watchdog to end the process before the deadline.
GRACEFUL_SHARE = 0.8
EXIT_ABANDONED = 0


class BoundedShutdownServer(uvicorn.Server):
    """A uvicorn server whose first exit signal also arms a watchdog of `shutdown_seconds`."""

    def __init__(self, config: uvicorn.Config, shutdown_seconds: float | None):
        super().__init__(config)
        self.shutdown_seconds = shutdown_seconds
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.shutdown_seconds is not None and self._watchdog is None:
            log.info("signal %d: stopping; exiting within %.1f s", sig, self.shutdown_seconds)
            self._watchdog = threading.Timer(self.shutdown_seconds, self._abandon)
            self._watchdog.daemon = True
            self._watchdog.start()
        super().handle_exit(sig, frame)

    def _abandon(self) -> None:
        log.warning(
            "shutdown deadline of %.1f s reached: abandoning in-flight work", self.shutdown_seconds
        )
        logging.shutdown()
        os._exit(EXIT_ABANDONED)


def run_until_terminated(config: uvicorn.Config, shutdown_seconds: float | None) -> None:
    """Run `config`'s app until a signal; exit within `shutdown_seconds` of the first one."""
    from simrec.serving.protocol import JsonErrorsHttpToolsProtocol

    config.http = JsonErrorsHttpToolsProtocol  # malformed HTTP gets a JSON 400 too
    if shutdown_seconds is not None:
        config.timeout_graceful_shutdown = max(1, int(shutdown_seconds * GRACEFUL_SHARE))
    server = BoundedShutdownServer(config, shutdown_seconds)
    server.run()
    if server._watchdog is not None:
        # Worker threads still running are joined at interpreter exit; do not wait for them.
        log.info("stopped")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
