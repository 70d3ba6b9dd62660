"""Backups in an object store (``s3://bucket/prefix``, ``gs://``, ``az://``): written
straight to it, read, verified and restored from it, pruned there.

A store has no rename, so completion is marked by the order of writes (docs/format.md,
"Backups in object storage"):

1. ``<prefix>/<NAME>/claim.json`` is created with a conditional write (``If-None-Match``):
   of two dumps given one name, the second is refused (exit 4) before it writes a byte.
2. Data, large-object and schema files stream to their final keys as multipart uploads: an
   object appears only when every byte of it arrived; a failed or cancelled upload is
   aborted.
3. ``SHA256SUMS``, then ``manifest.json``, again a conditional write, and last: the
   manifest is the only mark of a complete backup, and every reader refuses a backup
   without one.

A dump that fails removes what it wrote. A killed one leaves its claim and the files it
finished, never a manifest: ``prune`` (and ``dump --keep``) removes such a backup once its
claim is older than ``ABANDONED_AFTER``. Parts of an upload in flight when the process died
stay invisible in the store until its lifecycle rule aborts them (README).

A prefix is shared with whatever else people keep there, so retention goes by content,
never by a name alone: a folder without a manifest is a dead dump only if its
``claim.json`` parses as asyncsnap's claim of that very name (``read_claim``), and what is
removed from any backup is only what a dump writes (``manifest.written_by_dump``, the
claim); every other object stays where it is and is reported.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from .. import format as manifest
from ..errors import OutputExists, StoreFailed, UsageError, VerificationFailed
from ..format import MANIFEST_NAME, Backup, Compression, written_by_dump
from ..scratch import PrivateScratch
from ..version import __version__
from .backup import StoreSource, read_manifest
from .files import DataFileWriter, store_writer, validate_backup_name
from .retention import Candidate, apply_policy
from .s3 import S3Store, StoreUrl
from .store import ObjectMissing, Store, StoredObject, exists

CLAIM_NAME = "claim.json"
# What marks a claim as asyncsnap's (docs/format.md, "Backups in object storage").
CLAIM_FORMAT = "asyncsnap-claim"
CLAIM_VERSION = 1
# A claim is a few hundred bytes; a larger claim.json is someone else's and is not read.
_CLAIM_MAX_BYTES = 64 * 1024
# The claim asyncsnap 0.7.0 and 0.8.0 wrote: no marker, no version, no backup name.
_LEGACY_CLAIM_KEYS = frozenset({"tool", "host", "pid", "started_at"})
# A backup with a claim and no manifest this much older than now is a dump that died:
# prune removes it. Longer than any dump should run (--max-duration bounds one).
ABANDONED_AFTER = timedelta(hours=24)
# A running dump rewrites its claim this often, so that a claim that is old is a dump that
# is gone however long dumps run; prune refuses an --abandoned-after shorter than
# ABANDONED_FLOOR_RENEWALS renewals (a few renewals may fail while the store is slow).
CLAIM_RENEW_SECONDS = 60.0
ABANDONED_FLOOR_RENEWALS = 10
# An object's modification time in a listing is whole seconds (S3's LastModified; seaweedfs
# too): a claim rewritten at 12.95 lists as 12, so its age as listed is up to a second more
# than its true age. Prune takes that second off before comparing with --abandoned-after.
LISTED_TIME_RESOLUTION = timedelta(seconds=1)


@dataclass
class StoredBackup:
    """What one ``<prefix>/<NAME>/`` holds, from a listing."""

    name: str
    keys: list[str] = field(default_factory=list)  # relative to the prefix
    complete: bool = False  # has a manifest
    claimed: datetime | None = None  # when its claim was written, if it has one


def list_backups(store: Store) -> list[StoredBackup]:
    """Every ``NAME/`` directly under the store's prefix, by name."""
    return _folders(store.objects())[0]


def _folders(objects: Iterable[StoredObject]) -> tuple[list[StoredBackup], list[str]]:
    """The ``NAME/`` folders of a listing, by name, and the keys directly in the prefix."""
    found: dict[str, StoredBackup] = {}
    loose: list[str] = []
    for stored in objects:
        name, sep, relpath = stored.key.partition("/")
        if not sep:
            loose.append(stored.key)  # an object directly in the prefix: not a backup
            continue
        entry = found.setdefault(name, StoredBackup(name))
        entry.keys.append(stored.key)
        if relpath == MANIFEST_NAME:
            entry.complete = True
        elif relpath == CLAIM_NAME:
            entry.claimed = stored.modified
    return [found[n] for n in sorted(found)], sorted(loose)


def claim_body(name: str) -> dict[str, Any]:
    """What ``NAME/claim.json`` holds: the marker, its version and the backup's name (so
    that prune can tell asyncsnap's claim from anyone's ``claim.json``), then who is
    writing, from where, since when (no credentials, no connection string)."""
    return {
        "format": CLAIM_FORMAT,
        "format_version": CLAIM_VERSION,
        "name": name,
        "tool": {"name": "asyncsnap", "version": __version__},
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


@dataclass(frozen=True)
class ClaimCheck:
    """What a ``claim.json`` is: asyncsnap's claim of the backup it lies in, or why not."""

    ours: bool
    why: str = ""  # when not ours: for the "left alone" line
    legacy: bool = False  # as asyncsnap 0.7.0 and 0.8.0 wrote it (no name to check)


def read_claim(store: Store, name: str) -> ClaimCheck:
    """Read ``NAME/claim.json`` (at most 64 KiB of it) and say whether it is asyncsnap's
    claim of ``NAME``: a JSON object with ``format`` ``"asyncsnap-claim"``, a
    ``format_version`` this version writes, and ``name`` equal to ``NAME``."""
    key = f"{name}/{CLAIM_NAME}"
    raw = b""
    try:
        chunks = store.open_read(key, chunk_size=_CLAIM_MAX_BYTES)
        try:
            for chunk in chunks:
                raw += chunk
                if len(raw) > _CLAIM_MAX_BYTES:
                    return ClaimCheck(False, "its claim.json is not asyncsnap's")
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    except ObjectMissing:
        return ClaimCheck(False, "no manifest.json and no claim.json: not an asyncsnap backup")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return ClaimCheck(False, "its claim.json is not asyncsnap's")
    if body.get("format") != CLAIM_FORMAT:
        if _is_legacy_claim(body):
            return ClaimCheck(
                False,
                "a claim of asyncsnap 0.8.0 or older, which does not name its backup: "
                "remove it by hand once no dump is writing there",
                legacy=True,
            )
        return ClaimCheck(False, "its claim.json is not asyncsnap's")
    version = body.get("format_version")
    if version != CLAIM_VERSION or isinstance(version, bool):
        return ClaimCheck(False, "a claim of another asyncsnap version: leave it to that one")
    if body.get("name") != name:
        return ClaimCheck(False, "its claim.json names another backup")
    return ClaimCheck(True)


def _is_legacy_claim(body: dict[str, Any]) -> bool:
    """Exactly what asyncsnap 0.7.0 and 0.8.0 wrote: ``tool``, ``host``, ``pid`` and
    ``started_at``, the tool ``"asyncsnap"``."""
    return (
        set(body) == _LEGACY_CLAIM_KEYS
        and body["tool"] == "asyncsnap"
        and isinstance(body["host"], str)
        and isinstance(body["pid"], int)
        and isinstance(body["started_at"], str)
    )


def claim_renew_seconds() -> float:
    """How often a dump renews its claim: ``CLAIM_RENEW_SECONDS``, or
    ``ASYNCSNAP_CLAIM_RENEW_SECONDS`` (0.1 to 3600; the tests shorten it to race prune
    against dumps in seconds, not minutes). prune's floor follows it."""
    raw = os.environ.get("ASYNCSNAP_CLAIM_RENEW_SECONDS")
    if raw is None:
        return CLAIM_RENEW_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0.1 <= seconds <= 3600:
        raise UsageError(
            f"ASYNCSNAP_CLAIM_RENEW_SECONDS={raw!r} is not a number of seconds from 0.1 to 3600",
            hint="unset it: a dump renews its claim every 60 seconds",
        )
    return seconds


def abandoned_floor() -> timedelta:
    """The youngest a claim can be for prune to take it for a dead dump's."""
    return timedelta(seconds=claim_renew_seconds() * ABANDONED_FLOOR_RENEWALS)


class ClaimRenewal:
    """Rewrites ``NAME/claim.json`` every ``claim_renew_seconds`` while a dump runs (a
    thread): its modification time is the dump's heartbeat, which prune reads. A claim
    found gone means someone removed the backup under the dump: ``lost`` says so, and the
    dump fails instead of completing (``BackupPrefix.commit``)."""

    def __init__(self, store: Store, name: str, body: dict[str, Any]) -> None:
        import threading

        self._store, self._key, self._body = store, f"{name}/{CLAIM_NAME}", body
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(claim_renew_seconds(),), name="asyncsnap-claim", daemon=True
        )
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if not exists(self._store, self._key):
                    self.lost = True
                    return
                renewed = {**self._body, "renewed_at": _now_text()}
                self._store.put(self._key, orjson.dumps(renewed) + b"\n")
            except StoreFailed:
                continue  # the store is slow or away: the next renewal tries again

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _now_text() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _claim(store: Store, name: str) -> dict[str, Any]:
    """Create ``NAME/claim.json`` (``claim_body``) only if nobody has; its body."""
    body = claim_body(name)
    try:
        store.put_new(f"{name}/{CLAIM_NAME}", orjson.dumps(body) + b"\n")
    except OutputExists as exc:
        raise OutputExists(
            f"{store.where}/{name} is taken: another dump claimed that name",
            hint="choose another --name, or remove the old backup",
        ) from exc
    return body


class BackupPrefix:
    """A backup being written to ``<store prefix>/<name>/`` (``storage.BackupTarget``)."""

    def __init__(self, store: Store, name: str, recipients: list[Any] | None = None) -> None:
        self.store = store
        self.name = name
        self.recipients = recipients
        self.path = f"{store.where}/{name}"
        self._manifest: bytes | None = None
        self._scratch = PrivateScratch()
        self._renewal: ClaimRenewal | None = None

    @classmethod
    def check_free(cls, store: Store, name: str) -> None:
        """Refuse a name with anything under it already (a backup, a dump's claim)."""
        validate_backup_name(name)
        if store.objects(name + "/"):
            raise OutputExists(
                f"{store.where}/{name} already exists",
                hint="choose another --name or -o prefix, or remove the old one",
            )

    @classmethod
    def create(cls, store: Store, name: str, recipients: list[Any] | None = None) -> BackupPrefix:
        """Claim ``name`` (conditional write), then check nothing else is under it."""
        validate_backup_name(name)
        claim = _claim(store, name)
        taken = [k for k in store.objects(name + "/") if k.key != f"{name}/{CLAIM_NAME}"]
        if taken:
            # Objects without a claim: not a dump's (another tool's, or a half-removed
            # backup's). Give the name back and touch nothing.
            with contextlib.suppress(StoreFailed):
                store.delete([f"{name}/{CLAIM_NAME}"])
            raise OutputExists(
                f"{store.where}/{name} already holds objects",
                hint="choose another --name or -o prefix",
            )
        prefix = cls(store, name, recipients)
        prefix._renewal = ClaimRenewal(store, name, claim)
        return prefix

    cheap_writers = False  # an upload begins with the writer

    def data_writer(self, stem: str, compression: Compression) -> DataFileWriter:
        relpath = f"{manifest.DATA_DIR}/{stem}{manifest.EXTENSIONS[compression]}"
        key = f"{self.name}/{relpath}"
        return store_writer(self.store, key, relpath, compression, self.recipients)

    def write_small_file(self, relpath: str, content: bytes) -> None:
        if relpath == MANIFEST_NAME:
            self._manifest = content  # written by commit, last
            return
        self.store.put(f"{self.name}/{relpath}", content)

    def write_manifest(self, written: manifest.Manifest) -> None:
        # Kept as bytes: commit puts it (retried whole) and reads it back to compare.
        self._manifest = manifest.serialize_manifest(written)

    def sync_data(self) -> None:
        """Nothing to do: an object is durable once its upload has returned."""

    def scratch_directory(self) -> Path:
        return self._scratch.path()

    def written(self) -> Backup:
        """The backup as written so far, its manifest not yet in the store (for
        ``dump --verify``); ``StoreFailed`` if its objects are no longer all there."""
        backup = self._parsed()
        self._check_own_objects(self._expected_objects(backup))
        return backup

    def _parsed(self) -> Backup:
        assert self._manifest is not None
        body = manifest.load_bytes(self._manifest, f"{self.path}/{MANIFEST_NAME}", streamed=True)
        return manifest.parse(self.path, body, source=StoreSource(self.store, self.name))

    def commit(self) -> str:
        """Write the manifest (conditionally: never over another's): the backup is
        complete. Only if every object the manifest lists is in the store at its size and
        the claim is still there, before the manifest is written and again after (a prune
        that took the dump for a dead one removes objects while it runs): otherwise the
        manifest is taken back and ``StoreFailed`` raised, and the dump fails."""
        assert self._manifest is not None
        self._scratch.remove()
        expected = self._expected_objects(self._parsed())
        self._check_own_objects(expected)
        key = f"{self.name}/{MANIFEST_NAME}"
        try:
            self.store.put_new(key, self._manifest)
        except OutputExists:
            # A retried request whose first attempt was stored finds its own manifest:
            # that is success. Anyone else's is not (the claim makes that all but
            # impossible).
            if b"".join(self.store.open_read(key)) != self._manifest:
                raise
        try:
            self._check_own_objects(expected)
        except StoreFailed:
            with contextlib.suppress(StoreFailed):
                self.store.delete([key])
            raise
        self._stop_renewal()
        return self.path

    def _expected_objects(self, backup: Backup) -> dict[str, int | None]:
        """The objects the manifest lists, by key, with their sizes; ``SHA256SUMS`` too
        (its size is not in the manifest: None)."""
        sizes: dict[str, int | None] = {f.path: f.stored_bytes for _, f in backup.data_files()}
        if backup.schema is not None:
            sizes.update((f.path, f.bytes) for f in backup.schema.files)  # bytes as stored
        sizes[manifest.SUMS_NAME] = None
        return {f"{self.name}/{relpath}": size for relpath, size in sizes.items()}

    def _check_own_objects(self, expected: dict[str, int | None]) -> None:
        listed = {o.key: o.size for o in self.store.objects(self.name + "/")}
        missing = [
            k for k, size in expected.items() if k not in listed or size not in (None, listed[k])
        ]
        claim_gone = f"{self.name}/{CLAIM_NAME}" not in listed
        if self._renewal is not None and self._renewal.lost:
            claim_gone = True
        if missing or claim_gone:
            what = f"{len(missing)} of its {len(expected)} files" if missing else "its claim"
            raise StoreFailed(
                f"{self.path} lost {what} while it was written: removed by someone else "
                "(a prune that took it for a dump that died, a lifecycle rule)",
                hint="nothing was completed; run the dump again",
            )

    def _stop_renewal(self) -> None:
        if self._renewal is not None:
            self._renewal.stop()
            self._renewal = None

    def abandon(self, keep_partial: bool) -> str | None:
        """Remove every object under the name, the claim last; with ``keep_partial`` keep
        them (never a manifest: none was written) for inspection. Raises ``StoreFailed``
        when the store cannot be reached to clean up."""
        self._scratch.remove()
        self._stop_renewal()
        if keep_partial:
            return self.path
        remove_backup(self.store, self.name)
        return None


def remove_backup(store: Store, name: str, keys: list[str] | None = None) -> list[str]:
    """Delete what a dump wrote under ``NAME/`` (``manifest.written_by_dump`` and the
    claim): the manifest first (from then on it is not a complete backup), the claim last
    (until then prune knows it as ours). ``keys``: the objects to consider, when a listing
    of them is at hand (a caller that has checked them: only these are deleted). Returns
    the keys it left, which no dump writes."""
    if keys is None:
        keys = [o.key for o in store.objects(name + "/")]
    own = [k for k in keys if _written_by_a_dump(name, k)]
    first = [k for k in own if k == f"{name}/{MANIFEST_NAME}"]
    last = [k for k in own if k == f"{name}/{CLAIM_NAME}"]
    store.delete(first)
    store.delete([k for k in own if k not in first and k not in last])
    store.delete(last)
    return [k for k in keys if k not in own]


def _written_by_a_dump(name: str, key: str) -> bool:
    folder, _, relpath = key.partition("/")
    return folder == name and (relpath == CLAIM_NAME or written_by_dump(relpath))


@dataclass(frozen=True)
class StorePrune:
    """What pruning a prefix found (names relative to it)."""

    kept: list[str]
    removed: list[str]
    abandoned: list[str]  # dumps that died: asyncsnap's claim, older than the limit, no manifest
    ignored: list[str]
    named: list[str]
    reasons: dict[str, str] = field(default_factory=dict)  # why each ignored one was
    foreign: list[str] = field(default_factory=list)  # keys inside removed backups, kept


def prune_prefix(
    url: StoreUrl,
    *,
    keep: int,
    dry_run: bool = False,
    include_named: bool = False,
    abandoned_after: timedelta = ABANDONED_AFTER,
    now: datetime | None = None,
) -> StorePrune:
    """``prune`` for a prefix in a store: keep the ``keep`` newest complete backups, remove
    older ones and abandoned dumps (only the objects a dump writes); leave everything else
    alone, saying why."""
    store = S3Store(url)
    if exists(store, MANIFEST_NAME):
        raise UsageError(
            f"{url} is a backup, not a prefix of backups",
            hint="give the prefix it is in (dump's -o)",
        )
    floor = abandoned_floor()
    if abandoned_after < floor:
        raise UsageError(
            f"--abandoned-after {abandoned_after.total_seconds():g} is shorter than "
            f"{floor.total_seconds():g} seconds: a dump renews its claim every "
            f"{claim_renew_seconds():g} seconds, so a younger claim may be a dump still writing",
            hint=f"give --abandoned-after {floor.total_seconds():g} or more (the default is a day)",
        )
    moment = now or datetime.now(UTC)
    complete: list[Candidate] = []
    abandoned: list[str] = []
    reasons: dict[str, str] = {}
    listed, loose = _folders(store.objects())
    for key in loose:
        reasons[key] = "an object, not a backup's folder"
    files: dict[str, set[str]] = {}  # a complete backup's listed files
    for entry in listed:
        if not entry.complete:
            claim = read_claim(store, entry.name)
            if not claim.ours:
                reasons[entry.name] = claim.why
            elif entry.claimed is not None and claim_age(entry.claimed, moment) > abandoned_after:
                abandoned.append(entry.name)
            else:
                reasons[entry.name] = "a dump claimed it recently: it may still be writing"
            continue
        try:
            body = read_manifest(store, f"{entry.name}/{MANIFEST_NAME}")
            backup = manifest.parse(
                f"{url}/{entry.name}", body, source=StoreSource(store, entry.name)
            )
        except (VerificationFailed, ObjectMissing):
            reasons[entry.name] = "its manifest.json does not check out"
            continue
        increment = backup.manifest.increment
        complete.append(
            Candidate(
                entry.name,
                backup.manifest.started_at,
                None if increment is None else increment.parent,
            )
        )
        files[entry.name] = _listed_files(backup)
    decision = apply_policy(complete, keep=keep, include_named=include_named)
    reasons.update(decision.reasons)
    named = decision.named
    kept, removed = decision.kept, decision.removed
    by_name = {entry.name: entry for entry in listed}
    foreign: list[str] = []
    for name in removed + abandoned:
        entry = by_name[name]
        if name in files:  # complete: what its manifest lists, and a claim that is ours
            claim = (
                read_claim(store, name)
                if f"{name}/{CLAIM_NAME}" in entry.keys
                else ClaimCheck(False)
            )
            own = files[name] | ({CLAIM_NAME} if claim.ours or claim.legacy else set())
            candidates = [k for k in entry.keys if k.partition("/")[2] in own]
        else:
            candidates = list(entry.keys)
            if not dry_run:
                # Looked at again just before removing: a dump renews its claim while it
                # runs, and one that completed meanwhile has its manifest now.
                alive = _alive_since(store, name, moment, abandoned_after)
                if alive is not None:
                    abandoned.remove(name)
                    reasons[name] = alive
                    continue
                candidates = [o.key for o in store.objects(name + "/")]
        if not dry_run:
            remove_backup(store, name, candidates)
        foreign += [k for k in entry.keys if k not in candidates or not _written_by_a_dump(name, k)]
    return StorePrune(
        kept,
        removed,
        abandoned,
        list(reasons),
        named,
        reasons=reasons,
        foreign=sorted(foreign),
    )


def _alive_since(
    store: Store, name: str, moment: datetime, abandoned_after: timedelta
) -> str | None:
    """Why ``NAME`` is no longer a dead dump's (a manifest now, a claim renewed or gone),
    or None when it still is."""
    listed = {o.key: o for o in store.objects(name + "/")}
    if f"{name}/{MANIFEST_NAME}" in listed:
        return "its dump completed while prune ran"
    claim = listed.get(f"{name}/{CLAIM_NAME}")
    if claim is None or claim.modified is None:
        return "its claim went away while prune ran"
    if claim_age(claim.modified, datetime.now(UTC)) <= abandoned_after or claim.modified > moment:
        return "a dump renewed its claim: it is still writing"
    return None


def claim_age(modified: datetime, now: datetime) -> timedelta:
    """How long ago a claim listed as ``modified`` was surely written: the listing's
    whole seconds taken off (``LISTED_TIME_RESOLUTION``), so a claim renewed every 0.1 s
    never looks older than 0.1 s plus the listing's delay."""
    return now - modified - LISTED_TIME_RESOLUTION


def _listed_files(backup: Backup) -> set[str]:
    """A complete backup's own files: its manifest, ``SHA256SUMS`` and what it lists."""
    listed = {MANIFEST_NAME, manifest.SUMS_NAME}
    listed.update(f.path for _, f in backup.data_files())
    if backup.schema is not None:
        listed.update(f.path for f in backup.schema.files)
    return listed
