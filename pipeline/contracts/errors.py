"""The pipeline's own small error hierarchy.

Foreign exceptions (httpx, botocore, nats) are translated into these in exactly one place each
(`backend.py`, `store.py`, `bus.py`); handlers only ever decide on `Retryable` vs `Permanent`.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class Retryable(PipelineError):
    """Try again later: timeouts, 429, 5xx, refused connections, S3 hiccups, bad audio."""


class Permanent(PipelineError):
    """Trying again cannot help: invalid input, 4xx from the model server, missing bucket."""


class BackendRetryable(Retryable):
    pass


class BackendPermanent(Permanent):
    pass


class StoreRetryable(Retryable):
    pass


class StorePermanent(Permanent):
    pass


class AudioInvalid(Retryable):
    """The model server answered, but the audio failed a check. A new take may pass."""


class AudioTruncated(AudioInvalid):
    """The model stopped on its token cap (`finish_reason: "length"`, or speech audio as long as
    the cap): the audio is cut, not the speech of the whole text. Retried like other bad audio;
    a chunk whose deliveries all ended so fails with `reason`."""

    reason = "truncated"


class StartupError(PipelineError):
    """A dependency (NATS, S3, model server) is unreachable or misconfigured at start-up.

    The message is one line naming what and where; the CLI prints it and exits non-zero.
    """
