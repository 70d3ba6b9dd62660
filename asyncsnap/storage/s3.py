"""Object stores (``s3://bucket/prefix``, and ``gs://``, ``az://`` through the same library):
the one module that talks to them, so that credentials, retries, timeouts and error
messages are the same for every command that will use it.

Built on obstore, the Python binding of Rust's ``object_store``. Measured on this project's
2-core machine against SeaweedFS (``weed mini``) on the same host, 512 MiB streamed in
256 KiB writes, two runs each: upload 134-142 MiB/s at 23 MiB peak RSS, download 594-696
MiB/s at 30-31 MiB; s3fs (fsspec over aiobotocore) 80-84 MiB/s up, 212-273 MiB/s down, at
92-99 MiB. obstore also does conditional writes (``If-None-Match: *``), which is how a
manifest is written only if no other dump wrote one first.

For S3, the endpoint, region and credentials are those the AWS CLI would use: the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``), then the profile
(``AWS_PROFILE``) in the shared config and credentials files, in the AWS CLI's order
(``awsconfig``); ``GOOGLE_*``/``AZURE_*`` for the others, as their tools read them.
Credentials are never put in a URL, a message or a file: a URL with credentials in it is
refused.

Every call is synchronous and blocking: the dump's writers and the readers of verify and
restore run in worker threads already. Requests are retried by the library with
exponential backoff (5xx, dropped connections, timeouts) for at most ``RETRY_TIMEOUT``
in all; then the call fails with ``StoreFailed`` (exit 4), naming the store, never the
credentials.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import OutputExists, StoreFailed, UsageError
from .store import ObjectMissing, Sink, StoredObject

if TYPE_CHECKING:
    from obstore.store import ObjectStore

SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "azure": "az"}
# Bounded: a store that went away fails the run within about this long, not hours later.
# ASYNCSNAP_STORE_RETRY_SECONDS changes it (README, "Backups in object storage").
RETRY_TIMEOUT = timedelta(seconds=60)
RETRY_VARIABLE = "ASYNCSNAP_STORE_RETRY_SECONDS"
MAX_RETRIES = 5
CONNECT_TIMEOUT = timedelta(seconds=10)
REQUEST_TIMEOUT = timedelta(minutes=5)  # one request: a part upload or a ranged read
PART_SIZE = 8 * 1024 * 1024  # a streamed object's multipart part: objects up to 78 GiB
PARTS_IN_FLIGHT = 2  # per object: memory is about (1 + this) parts
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,254}")


def shown(text: str) -> str:
    """A location as it may be printed: what the user wrote, quoted, but never a URL's
    credentials (``user:secret@``), query (``?secret=``) or fragment, and nothing after
    the scheme of a string that only starts like a URL (``s3:/KEY:SECRET@bucket``: where
    the credentials end is anyone's guess)."""
    head = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    if head is None:
        return repr(text)
    if not text.startswith(head.group(0) + "//"):
        return repr(head.group(0) + "...")
    parts = urlsplit(text)
    host = parts.netloc.rpartition("@")[2]
    hidden = "***@" if "@" in parts.netloc else ""
    rest = "?..." if parts.query or parts.fragment else ""
    return repr(f"{parts.scheme}://{hidden}{host}{parts.path}{rest}")


@dataclass(frozen=True)
class StoreUrl:
    """``scheme://bucket/prefix``, checked: no credentials, no ``..``, a bucket name."""

    scheme: str  # s3, gs or az
    bucket: str
    prefix: str  # no leading or trailing "/"; "" for the bucket's root

    @classmethod
    def parse(cls, text: str) -> StoreUrl:
        """
        >>> StoreUrl.parse("s3://backups/nightly/shop/")
        StoreUrl(scheme='s3', bucket='backups', prefix='nightly/shop')
        """
        parts = urlsplit(text)
        scheme = SCHEMES.get(parts.scheme.lower())
        if scheme is None:
            raise UsageError(
                f"{shown(text)} is not an object store URL", hint="use s3://bucket/prefix"
            )
        if "@" in parts.netloc or parts.password or parts.username:
            raise UsageError(
                "credentials in an object store URL are refused: they would be shown "
                "by ps and written to logs",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile) instead",
            )
        if parts.query or parts.fragment:
            raise UsageError(
                f"{shown(text)} has a query or fragment", hint="use scheme://bucket/prefix only"
            )
        if not _BUCKET.fullmatch(parts.netloc):
            raise UsageError(
                f"{parts.netloc!r} is not a bucket name", hint="use s3://bucket/prefix"
            )
        segments = [s for s in parts.path.split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise UsageError(f"{shown(text)} has a . or .. segment", hint="give the prefix plainly")
        return cls(scheme, parts.netloc, "/".join(segments))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def key(self, name: str) -> str:
        """The object key of ``name`` under the prefix."""
        return f"{self.prefix}/{name}" if self.prefix else name


def retry_timeout_from(environ: Mapping[str, str]) -> timedelta:
    """``ASYNCSNAP_STORE_RETRY_SECONDS`` (a positive number), else ``RETRY_TIMEOUT``."""
    text = environ.get(RETRY_VARIABLE)
    if not text:
        return RETRY_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 86400:
        raise UsageError(
            f"{RETRY_VARIABLE}={text!r} is not a number of seconds",
            hint=f"e.g. {RETRY_VARIABLE}=60 (the default), at most 86400",
        )
    return timedelta(seconds=seconds)


class S3Store:
    """One bucket and prefix, opened with the environment's credentials (a
    ``store.Store``)."""

    def __init__(
        self,
        url: StoreUrl,
        *,
        endpoint: str | None = None,
        environ: Mapping[str, str] | None = None,
        retry_timeout: timedelta | None = None,
    ) -> None:
        try:
            from obstore.store import from_url
        except ImportError as exc:
            raise UsageError(
                f"{url} needs the object store support, which is not installed",
                hint="pip install 'asyncsnap[s3]'",
            ) from exc

        self.url = url
        env = os.environ if environ is None else environ
        if retry_timeout is None:
            retry_timeout = retry_timeout_from(env)
        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "timeout": REQUEST_TIMEOUT,
        }
        config: dict[str, Any] = {}
        provider = None
        # Where S3 requests go, for messages: an endpoint and where it was configured
        self.endpoint_note = "the store's default endpoint"
        if url.scheme == "s3":
            config, provider, self.endpoint_note = _s3_config(env, endpoint)
            options["allow_http"] = str(config.get("endpoint", "")).startswith("http://")
        bucket_url = f"{url.scheme}://{url.bucket}"
        # from_url's overloads are typed per scheme; the dicts are built for the one chosen.
        self._store: ObjectStore = from_url(  # type: ignore[call-overload]
            bucket_url,
            config=config or None,
            client_options=options,
            retry_config={"max_retries": MAX_RETRIES, "retry_timeout": retry_timeout},
            credential_provider=provider,
        )

    @property
    def where(self) -> str:
        return str(self.url)

    def sink(self, name: str) -> Sink:
        return StoreSink(self, name)

    def local_path(self, name: str) -> Path | None:
        return None

    def check_access(self) -> None:
        """List the prefix once: a wrong key, a missing bucket or an unreachable store
        fails here, before anything is written."""
        import obstore

        with self._translated("list", self.url.prefix):
            obstore.list(self._store, prefix=self.url.prefix or None, chunk_size=1).collect()

    def put(self, name: str, data: bytes) -> None:
        """Write a small object whole (replacing one of that key)."""
        import obstore

        key = self.url.key(name)
        with self._translated("write", key):
            obstore.put(self._store, key, data)

    def put_new(self, name: str, data: bytes) -> None:
        """Write ``name`` only if no object has that key yet (a conditional write): two
        dumps into one prefix cannot both complete the same backup."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        key = self.url.key(name)
        try:
            with self._translated("write", key):
                obstore.put(self._store, key, data, mode="create")
        except StoreFailed as exc:
            if isinstance(exc.__cause__, AlreadyExistsError | PreconditionError):
                raise OutputExists(
                    f"{self.url}/{name} already exists",
                    hint="another dump wrote it first; give another --name",
                ) from exc.__cause__
            raise

    @contextmanager
    def writer(self, name: str) -> Iterator[Any]:
        """A file-like object streaming to ``name`` in parts of ``PART_SIZE`` (multipart
        upload): the object appears only when the block ends without an error; on an
        error the upload is abandoned and no object is left under the key."""
        import obstore

        key = self.url.key(name)
        with self._translated("write", key):
            file = obstore.open_writer(
                self._store, key, buffer_size=PART_SIZE, max_concurrency=PARTS_IN_FLIGHT
            )
            with file:  # obstore completes the upload on a clean exit, aborts it on error
                yield file

    def read(self, name: str, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of ``name``, streamed in chunks of about ``chunk_size``."""
        yield from self.open_read(name, chunk_size=chunk_size)

    def open_read(self, name: str, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Start reading ``name`` now (``ObjectMissing`` if there is no such object) and
        return its bytes as a stream of chunks of about ``chunk_size``."""
        import obstore

        key = self.url.key(name)
        with self._translated("read", key):
            result = obstore.get(self._store, key)
        return self._chunks(key, result.stream(min_chunk_size=chunk_size))

    def _chunks(self, key: str, stream: Any) -> Iterator[bytes]:
        with self._translated("read", key):
            for chunk in stream:
                yield bytes(chunk)

    def objects(self, under: str = "") -> list[StoredObject]:
        """Every object below the prefix (and ``under``), keys relative to the prefix."""
        import obstore

        base = self.url.key(under) if under else self.url.prefix
        cut = len(self.url.prefix) + 1 if self.url.prefix else 0
        with self._translated("list", base):
            pages = obstore.list(self._store, prefix=base or None)
            return [
                StoredObject(
                    str(meta["path"])[cut:],
                    int(meta["size"]),
                    meta.get("last_modified"),
                    meta.get("e_tag"),
                )
                for page in pages
                for meta in page
            ]

    def etag(self, name: str) -> str | None:
        """The object's entity tag as the store has it now (a HEAD)."""
        import obstore

        key = self.url.key(name)
        with self._translated("read", key):
            return obstore.head(self._store, key).get("e_tag")

    def delete(self, names: Sequence[str]) -> None:
        import obstore

        if not names:
            return
        keys = [self.url.key(n) for n in names]
        with self._translated("delete", keys[0] if keys else self.url.prefix):
            obstore.delete(self._store, keys)

    @contextmanager
    def _translated(self, action: str, key: str) -> Iterator[None]:
        """obstore's errors as one line naming the store and what failed; never the
        request's headers or signature."""
        from obstore.exceptions import (
            BaseError,
            NotFoundError,
            PermissionDeniedError,
            UnauthenticatedError,
        )

        where = f"{self.url.scheme}://{self.url.bucket}/{key}"
        try:
            yield
        except PermissionDeniedError as exc:
            raise _access_denied(action, where) from exc
        except UnauthenticatedError as exc:
            raise _credentials_refused(where) from exc
        except NotFoundError as exc:
            raise ObjectMissing(
                f"{where} does not exist", hint="check the bucket and the prefix"
            ) from exc
        except (BaseError, OSError) as exc:  # obstore's generic errors are OSErrors too
            code = _s3_code(exc)
            if code == "AccessDenied":
                raise _access_denied(action, where) from exc
            if code in _CREDENTIAL_CODES:
                raise _credentials_refused(where, code) from exc
            if code == "NoSuchKey":  # some stores send it without a 404
                raise ObjectMissing(
                    f"{where} does not exist", hint="check the bucket and the prefix"
                ) from exc
            raise StoreFailed(
                f"could not {action} {where}: {_reason(exc, code)}",
                hint=_hint(code, self.endpoint_note),
            ) from exc


def _s3_config(env: Mapping[str, str], endpoint: str | None) -> tuple[dict[str, Any], Any, str]:
    """obstore's config and credential provider for an S3 store, from the settings the
    AWS CLI would use (``awsconfig.resolve``), and where its requests go (for messages).
    obstore also reads ``AWS_*`` variables of the process environment on its own; where
    those would take it elsewhere than the resolved endpoint, refuse before any request
    (``UsageError``)."""
    from . import awsconfig

    settings = awsconfig.resolve(env, endpoint=endpoint)
    config: dict[str, Any] = {}
    process = os.environ
    service = process.get(awsconfig.OBSTORE_SERVICE_ENDPOINT)
    if service and service != settings.endpoint:
        # obstore takes this variable over any endpoint it is given (measured, 0.12).
        raise UsageError(
            f"{awsconfig.OBSTORE_SERVICE_ENDPOINT} is set, but the S3 endpoint to use is "
            + (
                f"{awsconfig.shown(settings.endpoint)} ({settings.endpoint_from})"
                if settings.endpoint
                else "AWS's (AWS_IGNORE_CONFIGURED_ENDPOINT_URLS)"
            ),
            hint=f"unset {awsconfig.OBSTORE_SERVICE_ENDPOINT} for this run, or give --endpoint-url",
        )
    legacy = process.get("AWS_ENDPOINT")
    if legacy and legacy != settings.endpoint:
        raise UsageError(
            "AWS_ENDPOINT is set: the AWS tools do not read it, and asyncsnap follows them",
            hint="use AWS_ENDPOINT_URL (or --endpoint-url) instead",
        )
    note = "AWS's endpoint for the region (no endpoint is configured)"
    if settings.endpoint is not None:
        config["endpoint"] = settings.endpoint
        note = f"{awsconfig.shown(settings.endpoint)} (from {settings.endpoint_from})"
    elif process.get("AWS_ENDPOINT_URL"):
        # Ignored as configured (AWS_IGNORE_CONFIGURED_ENDPOINT_URLS), but obstore would
        # read it: name AWS's endpoint for the region, as obstore forms it by default.
        config["endpoint"] = f"https://s3.{settings.region or 'us-east-1'}.amazonaws.com"
        config["virtual_hosted_style_request"] = False
    if settings.region is not None:
        config["region"] = settings.region
    provider = None
    if settings.keys is not None:
        config.update(settings.keys)
    else:
        provider = awsconfig.credential_provider(settings)
    return config, provider, note


def _access_denied(action: str, where: str) -> StoreFailed:
    return StoreFailed(
        f"the store refused to {action} {where}: access denied",
        hint="check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and that "
        "they may use this bucket",
    )


def _credentials_refused(where: str, code: str | None = None) -> StoreFailed:
    return StoreFailed(
        f"the store did not accept the credentials for {where}" + (f" ({code})" if code else ""),
        hint="check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    )


# S3 error codes that mean the key or secret is wrong, whatever status they came with.
_CREDENTIAL_CODES = frozenset(
    {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken"}
)
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def _s3_code(exc: BaseException) -> str | None:
    """The ``<Code>`` of an S3 error response inside obstore's message, if any."""
    match = _CODE.search(str(exc))
    return match.group(1) if match else None


class StoreSink:
    """A data file's stored bytes streamed to an object (``storage.Sink``): a multipart
    upload completed by ``finish``, abandoned by ``discard`` or by a failed ``write``, so
    that no object appears under the key unless every byte reached the store."""

    def __init__(self, store: S3Store, name: str) -> None:
        self.where = f"{store.url}/{name}"
        self._stack = ExitStack()
        self._file = self._stack.enter_context(store.writer(name))
        self._open = True

    def write(self, block: bytes) -> None:
        try:
            self._file.write(block)
        except BaseException as exc:
            self._open = False
            # Through the writer's context: the upload is abandoned, the error translated.
            if not self._stack.__exit__(type(exc), exc, exc.__traceback__):
                raise
            raise

    def finish(self) -> None:
        self._open = False
        self._stack.close()  # completes the upload (or raises, translated)

    def discard(self) -> None:
        if not self._open:
            return
        self._open = False
        abandoned = RuntimeError("discarded")
        with suppress(StoreFailed):  # the failure being handled matters more
            self._stack.__exit__(RuntimeError, abandoned, None)


def _reason(exc: BaseException, code: str | None) -> str:
    """What a person can act on, on one line: the S3 error code, or the kind of network
    failure; never the response body or the request's headers."""
    if code == "NoSuchBucket":
        return "the bucket does not exist"
    if code is not None:
        return f"the store answered {code}"
    text = " ".join(str(exc).split())
    for marker, reason in (
        ("404 Not Found", "not found (is the bucket there?)"),
        ("Connection refused", "connection refused"),
        ("error sending request", "the store did not answer"),
        ("timed out", "timed out"),
    ):
        if marker in text:
            return reason + (" after retries" if "retries" in text else "")
    return text.split("<?xml", 1)[0][:200].rstrip(" :")


def _hint(code: str | None, endpoint: str) -> str:
    if code == "NoSuchBucket":
        return "create the bucket, or check its name"
    return f"is the store reachable from here? requests went to {endpoint}"
