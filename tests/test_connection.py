"""Where the DSN comes from, and that passwords never reach the screen."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncsnap.cli import redact
from asyncsnap.connection import describe_target, resolve_dsn


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert resolve_dsn(None, cwd=tmp_path) is None  # libpq's PG* variables apply
    (tmp_path / ".env").write_text("OTHER=1\nDATABASE_URL=postgresql://envfile/db\n")
    assert resolve_dsn(None, cwd=tmp_path) == "postgresql://envfile/db"
    monkeypatch.setenv("DATABASE_URL", "postgresql://environ/db")
    assert resolve_dsn(None, cwd=tmp_path) == "postgresql://environ/db"
    assert resolve_dsn("postgresql://arg/db", cwd=tmp_path) == "postgresql://arg/db"


def test_describe_target_never_holds_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    target = describe_target("postgresql://alice:pa%40ss@db.example:6432/shop")
    assert str(target) == "alice@db.example:6432/shop"
    assert "pa" not in str(describe_target("host=h port=1 user=u password=pw dbname=d"))


def test_describe_target_reads_host_and_port_from_the_query_string(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket DSN (postgresql://u@/db?host=/run/postgresql&port=5433) names the socket
    and port in the logs, not localhost:5432."""
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    target = describe_target("postgresql://u:secret@/shop?host=/tmp/pg&port=55432")
    assert str(target) == "u@/tmp/pg:55432/shop"


def test_redact_removes_url_keyword_and_env_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "envsecret")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    text = "a pa@ss b pa%40ss c envsecret d kwsecret"
    out = redact(text, "postgresql://u:pa%40ss@h/d")
    assert "pa@ss" not in out and "pa%40ss" not in out and "envsecret" not in out
    assert "kwsecret" not in redact(text, "host=h password=kwsecret")


def test_redact_replaces_a_short_password_only_where_it_stands_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A one-letter password turned "permission" into "pe***mission" in every message."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    dsn = "postgresql://reader:r@db/shop"
    text = "error: permission denied for postgresql://reader:r@db/shop (password r)"
    assert redact(text, dsn) == (
        "error: permission denied for postgresql://reader:***@db/shop (password ***)"
    )
