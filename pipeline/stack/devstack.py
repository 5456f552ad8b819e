"""Start and stop the embedded servers: nats-server with JetStream, and SeaweedFS `weed mini` as S3.

Used by the session-scoped pytest fixtures and by `tts-pipeline up`. Everything binds 127.0.0.1
only, and everything a stack writes lives under one data directory:

    DATA/nats/   JetStream store          DATA/logs/nats-server.log   nats-server stdout+stderr
    DATA/s3/     SeaweedFS data           DATA/logs/weed.log          weed stdout+stderr
                                          DATA/logs/weed/             weed's own glog files

Each server runs in its own session (process group), so a Ctrl-C in a terminal reaches only our
Python process, which then stops the servers in order. Servers still running when the interpreter
exits normally are stopped by an atexit hook.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pipeline.stack.seaweed import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, S3Server
from pipeline.stack.servers import NatsServer


# -------------------------------------------------------------------------------------- stack


class DevStack:
    """nats-server and weed under one data directory, started and stopped together."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        nats_port: int | None = None,
        s3_port: int | None = None,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        bucket: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.nats = NatsServer(self.data_dir, port=nats_port)
        self.s3 = S3Server(
            self.data_dir, access_key=access_key, secret_key=secret_key, port=s3_port, bucket=bucket
        )

    def start(self) -> Self:
        """Start NATS, then S3; on failure, stop what started and raise DevStackError."""
        self.nats.start()
        try:
            self.s3.start()
        except BaseException:
            self.nats.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop S3, then NATS (reverse order of start). Safe to call twice."""
        try:
            self.s3.stop()
        finally:
            self.nats.stop()

    def describe(self) -> list[str]:
        """Lines for people: where each server listens and where its data and logs are."""
        lines = [
            f"nats  {self.nats.url}  (monitor {self.nats.monitor_url})",
            f"s3    {self.s3.endpoint_url}  (access key {self.s3.access_key})",
        ]
        if self.s3.bucket is not None:
            lines.append(f"bucket {self.s3.bucket}")
        lines += [f"data  {self.data_dir}", f"logs  {self.data_dir / 'logs'}"]
        return lines

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
