"""The pgoutput decoder (no server): every message kind read back from bytes built to the
protocol's description, and every damaged message refused rather than misread. The
decoder meets the server's own messages in tests/test_slot.py."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsnap import pgoutput
from asyncsnap.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    MalformedMessage,
    Origin,
    Relation,
    RelationColumn,
    Truncate,
    TypeInfo,
    Update,
    decode,
    format_lsn,
    parse_lsn,
)

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=20)
values = st.lists(st.one_of(st.none(), st.just(UNCHANGED), st.binary(max_size=40)), max_size=8)


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(row: tuple[pgoutput.Value, ...]) -> bytes:
    out = struct.pack("!h", len(row))
    for value in row:
        if value is None:
            out += b"n"
        elif value == UNCHANGED:
            out += b"u"
        else:
            assert isinstance(value, bytes)
            out += b"t" + struct.pack("!i", len(value)) + value
    return out


def encode(message: pgoutput.Message) -> bytes:
    """The protocol's bytes of ``message`` (the documentation's layout, written here apart
    from the decoder)."""
    match message:
        case Begin(final_lsn, commit_time, xid):
            return b"B" + struct.pack("!QqI", final_lsn, commit_time, xid)
        case Commit(commit_lsn, end_lsn, commit_time):
            return b"C" + struct.pack("!BQQq", 0, commit_lsn, end_lsn, commit_time)
        case Origin(lsn, name):
            return b"O" + struct.pack("!Q", lsn) + cstring(name)
        case Relation(oid, schema, name, identity, columns):
            out = b"R" + struct.pack("!I", oid) + cstring("" if schema == "pg_catalog" else schema)
            out += cstring(name) + identity.encode() + struct.pack("!h", len(columns))
            for c in columns:
                out += struct.pack("!B", int(c.key)) + cstring(c.name)
                out += struct.pack("!Ii", c.type_oid, c.type_modifier)
            return out
        case TypeInfo(oid, schema, name):
            return b"Y" + struct.pack("!I", oid) + cstring(schema) + cstring(name)
        case Insert(relation, new):
            return b"I" + struct.pack("!I", relation) + b"N" + tuple_data(new)
        case Update(relation, old, old_is_key, new):
            out = b"U" + struct.pack("!I", relation)
            if old is not None:
                out += (b"K" if old_is_key else b"O") + tuple_data(old)
            return out + b"N" + tuple_data(new)
        case Delete(relation, old, old_is_key):
            return (
                b"D"
                + struct.pack("!I", relation)
                + (b"K" if old_is_key else b"O")
                + tuple_data(old)
            )
        case Truncate(relations, cascade, restart):
            options = int(cascade) | (2 if restart else 0)
            return (
                b"T"
                + struct.pack("!IB", len(relations), options)
                + b"".join(struct.pack("!I", r) for r in relations)
            )
        case LogicalMessage(transactional, lsn, prefix, content):
            return (
                b"M"
                + struct.pack("!BQ", int(transactional), lsn)
                + cstring(prefix)
                + struct.pack("!I", len(content))
                + content
            )
    raise AssertionError(message)


columns = st.builds(RelationColumn, name=names, type_oid=u32, type_modifier=i32, key=st.booleans())
row = values.map(tuple)
messages = st.one_of(
    st.builds(Begin, final_lsn=u64, commit_time=i64, xid=u32),
    st.builds(Commit, commit_lsn=u64, end_lsn=u64, commit_time=i64),
    st.builds(Origin, lsn=u64, name=names),
    st.builds(
        Relation,
        oid=u32,
        schema=names.filter(bool),
        name=names,
        replica_identity=st.sampled_from("dnfi"),
        columns=st.lists(columns, max_size=6).map(tuple),
    ),
    st.builds(TypeInfo, oid=u32, schema=names, name=names),
    st.builds(Insert, relation=u32, new=row),
    st.builds(
        Update, relation=u32, old=st.one_of(st.none(), row), old_is_key=st.booleans(), new=row
    ).map(lambda u: u if u.old is not None else Update(u.relation, None, False, u.new)),
    st.builds(Delete, relation=u32, old=row, old_is_key=st.booleans()),
    st.builds(
        Truncate,
        relations=st.lists(u32, max_size=5).map(tuple),
        cascade=st.booleans(),
        restart_identity=st.booleans(),
    ),
    st.builds(
        LogicalMessage, transactional=st.booleans(), lsn=u64, prefix=names, content=st.binary()
    ),
)


@given(messages)
@settings(max_examples=400)
def test_every_message_kind_reads_back_as_written(message: pgoutput.Message) -> None:
    assert decode(encode(message)) == message


@given(messages, st.data())
@settings(max_examples=300)
def test_a_message_cut_short_or_with_bytes_after_it_is_refused(
    message: pgoutput.Message, data: st.DataObject
) -> None:
    raw = encode(message)
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    with pytest.raises(MalformedMessage):
        decode(raw[:cut])
    with pytest.raises(MalformedMessage):
        decode(raw + data.draw(st.binary(min_size=1, max_size=4), label="after"))


def test_an_unchanged_toasted_value_is_not_null() -> None:
    message = decode(b"U" + struct.pack("!I", 7) + b"N" + tuple_data((b"1", UNCHANGED, None)))
    assert isinstance(message, Update)
    assert message.new == (b"1", UNCHANGED, None) and message.new[1] is not None


@pytest.mark.parametrize(
    "raw, says",
    [
        (b"", "cut short"),
        (b"Z", "unknown message tag"),
        (b"I" + struct.pack("!I", 1) + b"X", "without its new row"),
        (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 1) + b"b", "kind 'b'"),
        (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", -1), "-1 columns"),
        (
            b"I"
            + struct.pack("!I", 1)
            + b"N"
            + struct.pack("!h", 1)
            + b"t"
            + struct.pack("!i", -5),
            "-5 bytes",
        ),
        (
            b"I"
            + struct.pack("!I", 1)
            + b"N"
            + struct.pack("!h", 1)
            + b"t"
            + struct.pack("!i", 9)
            + b"x",
            "9 bytes",
        ),
        (b"D" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 0), "kind 'N'"),
        (b"T" + struct.pack("!IB", 2**32 - 1, 0), "truncate of 4294967295"),
        (b"R" + struct.pack("!I", 1) + b"s\0t\0" + b"x" + struct.pack("!h", 0), "replica identity"),
        (b"Y" + struct.pack("!I", 1) + b"s\0" + b"\xff\xfe\0", "not UTF-8"),
        (b"O" + struct.pack("!Q", 1) + b"no end", "unterminated"),
    ],
)
def test_damaged_messages_name_what_is_wrong(raw: bytes, says: str) -> None:
    with pytest.raises(MalformedMessage, match=says):
        decode(raw)


@given(u64)
def test_lsn_text_form_round_trips(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


@pytest.mark.parametrize(
    "text", ["", "0", "/1", "1/", "G/1", "123456789/0", "0/1/2", "-1/0", " 0/1"]
)
def test_malformed_lsns_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_lsn(text)
