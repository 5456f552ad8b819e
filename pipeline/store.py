"""The object store: boto3 against any S3 endpoint (SeaweedFS, MinIO, AWS).

boto3 blocks; every call runs in a bounded thread pool off the event loop, sized together with
the HTTP connection pool so threads never wait on connections. Lookups (HEAD) have a small pool
of their own: a synth worker asks "is this chunk done already?" before each model call, and that
question must not queue behind a whole batch of uploads. botocore errors become
`StoreRetryable` / `StorePermanent` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, TypeVar

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError as BotoConnectionError

from pipeline.contracts.errors import StartupError, StorePermanent, StoreRetryable
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import AUDIO_KEY

log = structlog.get_logger("pipeline.store")

T = TypeVar("T")

LOOKUP_THREADS = 4
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_RETRYABLE_CODES = {
    "500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
    "RequestTimeout", "RequestTimeTooSkewed", "Throttling", "ThrottlingException",
}


def audio_key(digest: str) -> str:
    """Content-addressed key of a chunk's audio (see `SynthRequest.audio_digest`)."""
    return AUDIO_KEY.format(digest=digest)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def translate(exc: Exception, what: str) -> Exception:
    """Map a botocore/boto3 exception to the pipeline's two kinds."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        message = f"{what}: {code or status} {error.get('Message', '')}".strip()
        if code in _RETRYABLE_CODES or status.startswith("5") or status == "429":
            return StoreRetryable(message)
        return StorePermanent(message)
    if isinstance(exc, (BotoConnectionError, BotoCoreError, OSError)):
        return StoreRetryable(f"{what}: {type(exc).__name__}: {exc}")
    return exc


class Store:
    """Async facade over one bucket. `prefix` scopes every key (tests use one per test)."""

    def __init__(self, settings: Settings, *, bucket: str | None = None, prefix: str | None = None):
        self.settings = settings
        self.bucket = bucket or settings.s3_bucket
        self.prefix = settings.s3_prefix if prefix is None else prefix
        self._pool = ThreadPoolExecutor(max_workers=settings.s3_max_threads, thread_name_prefix="s3")
        self._lookups = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="s3-head")
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            region_name=settings.s3_region,
            config=Config(
                max_pool_connections=settings.s3_max_threads + LOOKUP_THREADS,
                connect_timeout=min(5.0, settings.s3_timeout_s),
                read_timeout=settings.s3_timeout_s,
                # Retries belong to JetStream redelivery; one quick retry absorbs a dropped socket.
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def full_key(self, key: str) -> str:
        return f"{self.prefix.rstrip('/')}/{key}" if self.prefix else key

    async def _run(self, what: str, fn: Callable[..., T], *args: Any, pool: ThreadPoolExecutor | None = None,
                   **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool or self._pool, partial(fn, *args, **kwargs))
        except Exception as exc:  # translated, re-raised with the cause kept
            raise translate(exc, what) from exc

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing. Unreachable or refused store -> `StartupError`."""
        try:
            await self._run("head_bucket", self._client.head_bucket, Bucket=self.bucket)
            return
        except StorePermanent as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and str(cause.response["Error"].get("Code")) in {"404", "NoSuchBucket", "NotFound"}):
                raise StartupError(f"S3 at {self.settings.s3_endpoint_url} refused bucket {self.bucket!r}: {exc}") from None
        except StoreRetryable as exc:
            raise StartupError(f"cannot reach S3 at {self.settings.s3_endpoint_url}: {exc}") from None
        try:
            await self._run("create_bucket", self._client.create_bucket, Bucket=self.bucket)
        except StorePermanent as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                raise StartupError(f"S3 at {self.settings.s3_endpoint_url}: cannot create bucket {self.bucket!r}: {exc}") from None

    async def reachable(self) -> bool:
        """True when the bucket answers (a cheap probe for pausing and resuming work)."""
        try:
            await self._run("head_bucket", self._client.head_bucket, Bucket=self.bucket)
            return True
        except Exception:
            return False

    async def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> None:
        await self._run(
            f"put {key}", self._client.put_object,
            Bucket=self.bucket, Key=self.full_key(key), Body=data, ContentType=content_type,
            Metadata=metadata or {},
        )

    async def upload_file(self, key: str, path: str, content_type: str) -> int:
        """Upload a file in parts (multipart above 8 MiB): memory stays flat. Returns its size."""
        import os

        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024,
                                max_concurrency=4, use_threads=True)
        await self._run(
            f"upload {key}", self._client.upload_file, path, self.bucket, self.full_key(key),
            ExtraArgs={"ContentType": content_type}, Config=config,
        )
        return os.path.getsize(path)

    async def get(self, key: str) -> bytes:
        def _get() -> bytes:
            return self._client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"].read()

        return await self._run(f"get {key}", _get)

    async def head(self, key: str) -> dict | None:
        """Object metadata, or None when it does not exist."""
        def _head() -> dict | None:
            try:
                return self._client.head_object(Bucket=self.bucket, Key=self.full_key(key))
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                    return None
                raise

        return await self._run(f"head {key}", _head, pool=self._lookups)

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def delete(self, key: str) -> None:
        await self._run(f"delete {key}", self._client.delete_object, Bucket=self.bucket, Key=self.full_key(key))

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (relative to the store's own prefix), all pages."""
        def _list() -> list[str]:
            keys: list[str] = []
            strip = len(self.full_key(""))
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                keys.extend(item["Key"][strip:] for item in page.get("Contents", []))
            return keys

        return await self._run(f"list {prefix}", _list)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._lookups.shutdown(wait=False, cancel_futures=True)


async def open_store(settings: Settings) -> Store:
    """A store whose bucket exists; `StartupError` when S3 is unreachable or refuses us."""
    store = Store(settings)
    try:
        await store.ensure_bucket()
    except BaseException:
        store.close()
        raise
    return store
