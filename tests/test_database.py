"""The database's own properties as restore --create writes them (``asyncsnap.database``):
pure functions, no server. Everything here comes from a backup and may be hostile."""

from __future__ import annotations

import pytest

from asyncsnap.database import (
    BadSetting,
    acl_statements,
    create_options,
    property_statements,
    setting_clause,
    split_list_setting,
)
from asyncsnap.errors import VerificationFailed
from asyncsnap.format import AclItem, DatabaseProperties, _Checker, _database_properties

ALL = ("CREATE", "CONNECT", "TEMPORARY")


def props(**changes: object) -> DatabaseProperties:
    base = dict(
        owner="bob",
        acl=None,
        comment=None,
        connection_limit=-1,
        is_template=False,
        tablespace=None,
        locale_provider="libc",
        locale=None,
        icu_rules=None,
        settings=(),
        role_settings=(),
    )
    return DatabaseProperties(**{**base, **changes})  # type: ignore[arg-type]


def test_acl_statements_are_pg_dumps() -> None:
    """The REVOKEs and GRANTs pg_dump 15 writes for {bob=CTc/bob,carol=c/bob,
    dave=C*/bob,erin=C/dave} (read from its output): the default's items missing are
    revoked, the others granted, a grant by another role made as that role."""
    acl = (
        AclItem("bob", "bob", ALL),
        AclItem("carol", "bob", ("CONNECT",)),
        AclItem("dave", "bob", ("CREATE",), ("CREATE",)),
        AclItem("erin", "dave", ("CREATE",)),
    )
    assert acl_statements("db", acl, "bob") == [
        'REVOKE CONNECT,TEMPORARY ON DATABASE "db" FROM PUBLIC',
        'GRANT CONNECT ON DATABASE "db" TO "carol"',
        'GRANT CREATE ON DATABASE "db" TO "dave" WITH GRANT OPTION',
        'SET SESSION AUTHORIZATION "dave"',
        'GRANT CREATE ON DATABASE "db" TO "erin"',
        "RESET SESSION AUTHORIZATION",
    ]
    # The owner's own privileges cut down: ALL revoked, the rest granted back first.
    mine = (AclItem(None, "bob", ("CONNECT", "TEMPORARY")), AclItem("bob", "bob", ("CONNECT",)))
    assert acl_statements("db", mine, "bob") == [
        'REVOKE ALL ON DATABASE "db" FROM "bob"',
        'GRANT CONNECT ON DATABASE "db" TO "bob"',
    ]
    assert acl_statements("db", (), "bob")[:2] == [
        'REVOKE CONNECT,TEMPORARY ON DATABASE "db" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "db" FROM "bob"',
    ]


def test_settings_are_quoted_names_and_literal_values() -> None:
    assert setting_clause("work_mem=7MB") == "SET \"work_mem\" TO '7MB'"
    assert setting_clause("x.y=it's; DROP TABLE t; --") == (
        "SET \"x.y\" TO 'it''s; DROP TABLE t; --'"
    )
    assert setting_clause('search_path="$user", public, "we ""ird"') == (
        "SET \"search_path\" TO '$user', 'public', 'we \"ird'"
    )
    assert split_list_setting('""') == [""]
    for bad in ("work_mem TO 1; DROP TABLE t; --=1", "=1", "no equals sign", '"x"=1'):
        with pytest.raises(BadSetting):
            setting_clause(bad)
    with pytest.raises(BadSetting):
        split_list_setting('"unterminated, public')


def test_property_statements_and_flags() -> None:
    p = props(
        acl=(AclItem("bob", "bob", ALL),),
        comment="it's",
        connection_limit=3,
        is_template=True,
        settings=("work_mem=1MB",),
        role_settings=(),
    )
    got = property_statements('a"b', p, no_privileges=False)
    assert got[:4] == [
        "COMMENT ON DATABASE \"a\"\"b\" IS 'it''s'",
        'ALTER DATABASE "a""b" CONNECTION LIMIT = 3',
        'ALTER DATABASE "a""b" IS_TEMPLATE = true',
        'ALTER DATABASE "a""b" SET "work_mem" TO \'1MB\'',
    ]
    assert got[4] == 'REVOKE CONNECT,TEMPORARY ON DATABASE "a""b" FROM PUBLIC'
    assert not any("REVOKE" in s for s in property_statements("d", p, no_privileges=True))


def test_create_options_quote_what_they_take() -> None:
    p = props(locale_provider="icu", locale="de-DE", icu_rules="&a < b'", tablespace='t"s')
    assert create_options(
        encoding="UTF8", lc_collate="C", lc_ctype="C", properties=p, server_major=16
    ) == (
        "TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = icu LOCALE = 'C' "
        "ICU_LOCALE = 'de-DE' ICU_RULES = '&a < b''' TABLESPACE = \"t\"\"s\""
    )
    # A locale that is not a plain name is left out (the server's default), not quoted in.
    assert "LC_COLLATE" not in create_options(
        encoding="UTF8", lc_collate="C'; DROP", lc_ctype="C", properties=None, server_major=14
    )
    with pytest.raises(ValueError, match="icu locale provider"):
        create_options(encoding="UTF8", lc_collate="C", lc_ctype="C", properties=p, server_major=14)


@pytest.mark.parametrize(
    "entry",
    [
        {"owner": 5},
        {"acl": [{"grantee": None, "grantor": "b", "privileges": ["DROP"]}]},
        {
            "acl": [
                {
                    "grantee": None,
                    "grantor": "b",
                    "privileges": ["CREATE"],
                    "grantable": ["CONNECT"],
                }
            ]
        },
        {"locale_provider": "evil"},
        {"settings": [1]},
        {"comment": "nul \x00"},
    ],
)
def test_a_manifest_entry_of_the_wrong_shape_is_refused(entry: dict[str, object]) -> None:
    good = props().__dict__ | {"acl": None, "settings": [], "role_settings": []}
    with pytest.raises(VerificationFailed, match="database"):
        _database_properties(_Checker("manifest.json"), {**good, **entry})
