"""A database's own properties: read in a dump's snapshot, and what ``restore --create``
makes of them.

``pg_dump --create`` writes, besides the objects inside a database, the database itself:
its CREATE DATABASE options, owner, ACL, comment, connection limit, template flag,
``ALTER DATABASE ... SET`` and ``ALTER ROLE ... IN DATABASE ... SET``. A dump reads the
same catalog fields in its snapshot (``read_properties``) into the manifest's
``database`` entry (``manifest.DatabaseProperties``); ``restore --create`` turns them
into the statements pg_restore -C would run (``create_statement``, ``owner_statement``,
``property_statements``), honouring --no-owner and --no-privileges.

Everything here comes from a backup, which may be hostile: names only ever reach SQL
through ``quote_ident`` and values only as string literals (``quote_literal``, with
``standard_conforming_strings`` on, as every session has it); a setting's name must look
like one. A setting is applied as pg_restore -C applies it (any parameter the source had),
but once the restore is over, so that none of them (``default_transaction_read_only``, a
``role``, a connection limit, a REVOKE CONNECT) can change the restore's own sessions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import asyncpg

from .catalog import quote_ident
from .format import DATABASE_PRIVILEGES, AclItem, DatabaseProperties, RoleSettings
from .text import count

_PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}
# A configuration parameter's name: an identifier, or a custom one with dots.
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)*")
# What CREATE DATABASE may take as an encoding or a libc locale from a manifest.
_SAFE_LOCALE = re.compile(r"[A-Za-z0-9_.@ -]{1,64}")
# Parameters whose value is a list of quoted elements (pg_dump's
# variable_is_guc_list_quote): each element is a string literal of its own.
_LIST_QUOTE = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)


def quote_literal(value: str) -> str:
    """A SQL string literal (``standard_conforming_strings`` on: only ``'`` is special)."""
    return "'" + value.replace("'", "''") + "'"


async def read_properties(conn: asyncpg.Connection, version_num: int) -> DatabaseProperties:
    """The current database's properties, in ``conn``'s transaction (the dump's snapshot:
    ``pg_database`` and ``pg_db_role_setting`` are catalogs read like any table)."""
    if version_num >= 170000:
        locale = "d.datlocprovider::pg_catalog.text AS provider, d.datlocale AS locale"
    elif version_num >= 150000:
        locale = "d.datlocprovider::pg_catalog.text AS provider, d.daticulocale AS locale"
    else:
        locale = "'c' AS provider, NULL::pg_catalog.text AS locale"
    rules = "d.daticurules" if version_num >= 160000 else "NULL::pg_catalog.text"
    row = await conn.fetchrow(
        f"""
        SELECT pg_catalog.pg_get_userbyid(d.datdba)::pg_catalog.text AS owner,
               d.datacl IS NULL AS default_acl,
               pg_catalog.shobj_description(d.oid, 'pg_database') AS comment,
               d.datconnlimit AS connection_limit, d.datistemplate AS is_template,
               CASE WHEN t.spcname OPERATOR(pg_catalog.=) 'pg_default' THEN NULL
                    ELSE t.spcname::pg_catalog.text END AS tablespace,
               {locale}, {rules} AS icu_rules,
               (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                WHERE s.setdatabase OPERATOR(pg_catalog.=) d.oid
                  AND s.setrole OPERATOR(pg_catalog.=) 0) AS settings
        FROM pg_catalog.pg_database d
        JOIN pg_catalog.pg_tablespace t ON t.oid OPERATOR(pg_catalog.=) d.dattablespace
        WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
        """
    )
    assert row is not None
    acl = None
    if not row["default_acl"]:
        # aclexplode gives one row per privilege, items in the ACL's order; an item is
        # one (grantee, grantor) pair, so grouping by it keeps every item and its place.
        items: dict[tuple[int, int], tuple[str | None, str, list[str], list[str]]] = {}
        for r in await conn.fetch(
            """
            SELECT a.grantee, a.grantor, a.privilege_type, a.is_grantable,
                   CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN NULL
                        ELSE pg_catalog.pg_get_userbyid(a.grantee)::pg_catalog.text END
                       AS grantee_name,
                   pg_catalog.pg_get_userbyid(a.grantor)::pg_catalog.text AS grantor_name
            FROM pg_catalog.pg_database d,
                 pg_catalog.aclexplode(d.datacl) WITH ORDINALITY AS a
            WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
            ORDER BY a.ordinality
            """
        ):
            key = (r["grantee"], r["grantor"])
            entry = items.setdefault(key, (r["grantee_name"], r["grantor_name"], [], []))
            entry[2].append(r["privilege_type"])
            if r["is_grantable"]:
                entry[3].append(r["privilege_type"])
        acl = tuple(
            AclItem(
                grantee=grantee,
                grantor=grantor,
                privileges=tuple(p for p in DATABASE_PRIVILEGES if p in privileges),
                grantable=tuple(p for p in DATABASE_PRIVILEGES if p in grantable),
            )
            for grantee, grantor, privileges, grantable in items.values()
        )
    role_settings = tuple(
        RoleSettings(role=r["role"], settings=tuple(r["setconfig"] or ()))
        for r in await conn.fetch(
            """
            SELECT pg_catalog.pg_get_userbyid(s.setrole)::pg_catalog.text AS role,
                   s.setconfig
            FROM pg_catalog.pg_db_role_setting s, pg_catalog.pg_database d
            WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
              AND s.setdatabase OPERATOR(pg_catalog.=) d.oid
              AND s.setrole OPERATOR(pg_catalog.<>) 0
            ORDER BY 1
            """
        )
    )
    return DatabaseProperties(
        owner=row["owner"],
        acl=acl,
        comment=row["comment"],
        connection_limit=row["connection_limit"],
        is_template=row["is_template"],
        tablespace=row["tablespace"],
        locale_provider=_PROVIDERS.get(row["provider"], "libc"),
        locale=row["locale"],
        icu_rules=row["icu_rules"],
        settings=tuple(row["settings"] or ()),
        role_settings=role_settings,
    )


def create_options(
    *,
    encoding: str | None,
    lc_collate: str | None,
    lc_ctype: str | None,
    properties: DatabaseProperties | None,
    server_major: int,
) -> str:
    """The options of CREATE DATABASE ... WITH as pg_dump --create writes them: from
    template0, with the source's encoding, locales (provider, ICU or builtin locale, ICU
    rules) and tablespace.

    :raises ValueError: for a locale provider the target server does not have.
    """
    options = ["TEMPLATE = template0"]
    if encoding and _SAFE_LOCALE.fullmatch(encoding):
        options.append(f"ENCODING = {quote_literal(encoding)}")
    if properties is not None and server_major >= 15:
        options.append(f"LOCALE_PROVIDER = {properties.locale_provider}")
    elif properties is not None and properties.locale_provider != "libc":
        raise ValueError(
            f"the source database uses the {properties.locale_provider} locale provider, "
            f"which PostgreSQL {server_major} does not have"
        )
    collate = lc_collate if lc_collate and _SAFE_LOCALE.fullmatch(lc_collate) else None
    ctype = lc_ctype if lc_ctype and _SAFE_LOCALE.fullmatch(lc_ctype) else None
    if collate is not None and collate == ctype:
        options.append(f"LOCALE = {quote_literal(collate)}")
    else:
        if collate is not None:
            options.append(f"LC_COLLATE = {quote_literal(collate)}")
        if ctype is not None:
            options.append(f"LC_CTYPE = {quote_literal(ctype)}")
    if properties is not None:
        if properties.locale is not None:
            keyword = "BUILTIN_LOCALE" if properties.locale_provider == "builtin" else "ICU_LOCALE"
            options.append(f"{keyword} = {quote_literal(properties.locale)}")
        if properties.icu_rules is not None:
            options.append(f"ICU_RULES = {quote_literal(properties.icu_rules)}")
        if properties.tablespace is not None:
            options.append(f"TABLESPACE = {quote_ident(properties.tablespace)}")
    return " ".join(options)


def owner_statement(name: str, properties: DatabaseProperties) -> str:
    return f"ALTER DATABASE {quote_ident(name)} OWNER TO {quote_ident(properties.owner)}"


def _privileges(item: AclItem, *, grant_option: bool) -> tuple[str, str]:
    """pg_dump's parseAclItem for a database: the privileges granted without and with
    grant option, each "ALL" when the item holds every privilege alike."""
    plain = [p for p in item.privileges if p not in item.grantable or not grant_option]
    granted = [p for p in item.privileges if p in item.grantable and grant_option]
    everything = set(item.privileges) == set(DATABASE_PRIVILEGES)
    if everything and not plain:
        return "", "ALL"
    if everything and not granted:
        return "ALL", ""
    return ",".join(plain), ",".join(granted)


def _default_acl(owner: str) -> tuple[AclItem, ...]:
    """acldefault('d', owner): PUBLIC may connect and create temporary tables; the owner
    has every privilege."""
    return (
        AclItem(grantee=None, grantor=owner, privileges=("CONNECT", "TEMPORARY")),
        AclItem(grantee=owner, grantor=owner, privileges=DATABASE_PRIVILEGES),
    )


def acl_statements(name: str, acl: Sequence[AclItem], owner: str) -> list[str]:
    """The REVOKEs and GRANTs that turn the default ACL of a database owned by ``owner``
    into ``acl``: pg_dump's buildACLCommands (items of the default not in ``acl`` are
    revoked, items of ``acl`` not in the default granted, the owner's own grants first,
    grants by another role made as that role)."""
    target = f"DATABASE {quote_ident(name)}"
    base = _default_acl(owner)

    def who(grantee: str | None) -> str:
        return "PUBLIC" if grantee is None else quote_ident(grantee)

    first: list[str] = []
    second: list[str] = []
    for item in base:
        if item not in acl:
            plain, _ = _privileges(item, grant_option=False)
            first.append(f"REVOKE {plain} ON {target} FROM {who(item.grantee)}")
    for item in acl:
        if item in base:
            continue
        plain, granted = _privileges(item, grant_option=True)
        out = first if item.grantee == owner and item.grantor == owner else second
        as_grantor = item.grantor != owner
        if as_grantor:
            out.append(f"SET SESSION AUTHORIZATION {quote_ident(item.grantor)}")
        if plain:
            out.append(f"GRANT {plain} ON {target} TO {who(item.grantee)}")
        if granted:
            out.append(f"GRANT {granted} ON {target} TO {who(item.grantee)} WITH GRANT OPTION")
        if as_grantor:
            out.append("RESET SESSION AUTHORIZATION")
    return first + second


class BadSetting(ValueError):
    """A setting of the manifest that is not ``name=value`` with a parameter's name."""


def split_list_setting(value: str) -> list[str]:
    """A GUC_LIST_QUOTE parameter's stored value as its elements (PostgreSQL's
    SplitGUCList: comma-separated, each element bare or double-quoted with ``""`` for a
    quote, whitespace around elements ignored, nothing downcased).

    >>> split_list_setting('"$user", public, "we ird"')
    ['$user', 'public', 'we ird']

    :raises BadSetting: for a value that is not such a list.
    """
    elements = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == '"':
            i += 1
            element = []
            while True:
                end = value.find('"', i)
                if end < 0:
                    raise BadSetting(f"unterminated quote in {value!r}")
                element.append(value[i:end])
                if value[end + 1 : end + 2] == '"':
                    element.append('"')
                    i = end + 2
                    continue
                i = end + 1
                break
            elements.append("".join(element))
        else:
            start = i
            while i < n and value[i] != "," and not value[i].isspace():
                i += 1
            if i == start:
                raise BadSetting(f"empty element in {value!r}")
            elements.append(value[start:i])
        while i < n and value[i].isspace():
            i += 1
        if i == n:
            return elements
        if value[i] != ",":
            raise BadSetting(f"{value!r} is not a list")
        i += 1


def setting_clause(entry: str) -> str:
    """``SET name TO value`` for a ``name=value`` entry of ``setconfig``, as pg_dump's
    makeAlterConfigCommand writes it: the name quoted as an identifier, the value a string
    literal (each element of a list parameter its own).

    :raises BadSetting: when the entry is not a parameter's ``name=value``.
    """
    name, sep, value = entry.partition("=")
    if not sep or not _SETTING_NAME.fullmatch(name):
        raise BadSetting(f"{entry[:80]!r} is not a setting (name=value)")
    if name.lower() in _LIST_QUOTE:
        rendered = ", ".join(quote_literal(v) for v in split_list_setting(value))
    else:
        rendered = quote_literal(value)
    return f"SET {quote_ident(name)} TO {rendered}"


def property_statements(
    name: str,
    properties: DatabaseProperties,
    *,
    no_privileges: bool,
    skip_roles: frozenset[str] = frozenset(),
) -> list[str]:
    """What pg_restore -C runs after CREATE DATABASE and its owner: the comment, the
    connection limit, the template flag, the settings, the role settings (but those of
    ``skip_roles``), the ACL (unless ``no_privileges``).

    :raises BadSetting: for a setting that is not ``name=value``.
    """
    db = f"DATABASE {quote_ident(name)}"
    out = []
    if properties.comment is not None:
        out.append(f"COMMENT ON {db} IS {quote_literal(properties.comment)}")
    if properties.connection_limit != -1:
        out.append(f"ALTER {db} CONNECTION LIMIT = {int(properties.connection_limit)}")
    if properties.is_template:
        out.append(f"ALTER {db} IS_TEMPLATE = true")
    out += [f"ALTER {db} {setting_clause(s)}" for s in properties.settings]
    for role in properties.role_settings:
        if role.role in skip_roles:
            continue
        out += [
            f"ALTER ROLE {quote_ident(role.role)} IN {db} {setting_clause(s)}"
            for s in role.settings
        ]
    if properties.acl is not None and not no_privileges:
        out += acl_statements(name, properties.acl, properties.owner)
    return out


def roles_named(properties: DatabaseProperties, *, no_owner: bool, no_privileges: bool) -> set[str]:
    """The roles the statements for ``properties`` name (the owner unless ``no_owner``,
    the ACL's unless ``no_privileges``), role settings aside."""
    roles = set() if no_owner else {properties.owner}
    if properties.acl is not None and not no_privileges:
        for item in properties.acl:
            roles.add(item.grantor)
            if item.grantee is not None:
                roles.add(item.grantee)
    return roles


def describe(properties: DatabaseProperties, *, no_owner: bool, no_privileges: bool) -> str:
    """The properties --create gives the database, in words (for --dry-run and the log)."""
    parts = []
    if not no_owner:
        parts.append(f"owner {properties.owner}")
    if properties.acl is not None and not no_privileges:
        parts.append(f"privileges ({len(properties.acl)} entries)")
    if properties.settings:
        parts.append(count(len(properties.settings), "setting"))
    if properties.role_settings:
        parts.append(f"settings of {count(len(properties.role_settings), 'role')}")
    if properties.comment is not None:
        parts.append("comment")
    if properties.connection_limit != -1:
        parts.append(f"connection limit {properties.connection_limit}")
    if properties.is_template:
        parts.append("template")
    if properties.tablespace is not None:
        parts.append(f"tablespace {properties.tablespace}")
    return ", ".join(parts) if parts else "none besides the defaults"
