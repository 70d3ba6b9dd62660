/*
 * asyncsnap._rows: the per-row work of the fast data path, in native code.
 *
 * Dump:    COPY ... TO STDOUT text format  ->  NDJSON lines as docs/format.md writes them
 * Restore: NDJSON lines                    ->  COPY ... FROM STDIN text format, or
 *          NDJSON lines                    ->  COPY ... FROM STDIN binary tuples (tables of
 *                                              integers, text types and booleans)
 *
 * Both work on whole lines only (the Python side keeps a partial line for the next call),
 * on buffers the caller owns, and release the GIL for the whole conversion, so several
 * chunks convert on several cores at once. Anything that does not have the exact shape
 * expected raises ValueError naming the line and column: a wrong line is never written.
 *
 * What the dump writes is byte for byte what the server-rendered path writes
 * (row_to_json with asyncsnap.render's expressions): escape_json's escaping, to_json's
 * rendering of numbers, booleans and timestamps (ISO 8601 with "T" and a "+hh:mm" offset).
 * tests/test_fastpath.py compares the two on every type of the fidelity table.
 *
 * Fingerprints (asyncsnap.fingerprint, docs/format.md "Row fingerprints"): the sum of each
 * line's SHA-256: on the CPU's SHA instructions where it has them (x86 SHA extensions,
 * below), elsewhere through OpenSSL's EVP interface (libcrypto, the one Python's hashlib
 * uses). No deprecated OpenSSL call: setup.py makes one a build error.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ buffers */

typedef struct {
    char *p;
    size_t len, cap;
    /* When set, p is this bytes object's buffer (see start_buffer): the result is built
     * in place, with no copy at the end. A buffer that outgrows it moves to malloc. */
    PyObject *bytes;
    int bytes_left; /* p no longer points into bytes: it is malloc's */
} Buf;

static int buf_grow(Buf *b, size_t extra)
{
    size_t need = b->len + extra, cap = b->cap ? b->cap : 1 << 16;
    char *p;
    if (need < b->len) return -1; /* overflow */
    while (cap < need) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    if (b->bytes != NULL && !b->bytes_left) {
        /* leave the bytes object (released with the GIL held, in finish_buffer) */
        p = malloc(cap);
        if (p == NULL) return -1;
        memcpy(p, b->p, b->len);
        b->bytes_left = 1;
    } else {
        p = realloc(b->p, cap);
        if (p == NULL) return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

#define RESERVE(b, n)                                                                   \
    do {                                                                                \
        if ((b)->len + (size_t)(n) > (b)->cap && buf_grow((b), (size_t)(n)) < 0) {      \
            err_set(err, -1, -1, "out of memory");                                       \
            return -1;                                                                  \
        }                                                                               \
    } while (0)
#define PUT(b, c) ((b)->p[(b)->len++] = (char)(c))
#define PUTS(b, s, n) (memcpy((b)->p + (b)->len, (s), (n)), (b)->len += (n))

typedef struct {
    char msg[256];
    int nomem;
    const char *what; /* a static description */
    Py_ssize_t line;  /* 0-based, within the data given */
    int column;       /* 0-based, or -1 */
} Err;

/* LineError(ValueError): a line not as expected; .what, .line (0-based within the data
 * given to the call) and .column (0-based, or -1) let the caller name the file's line. */
static PyObject *LineError;

static void err_set(Err *err, Py_ssize_t line, int column, const char *what)
{
    err->what = what;
    err->line = line;
    err->column = column;
    if (column >= 0)
        snprintf(err->msg, sizeof err->msg, "line %zd, column %d: %s", line + 1, column + 1,
                 what);
    else if (line >= 0)
        snprintf(err->msg, sizeof err->msg, "line %zd: %s", line + 1, what);
    else {
        snprintf(err->msg, sizeof err->msg, "%s", what);
        err->nomem = 1;
    }
}

static PyObject *raise_err(const Err *err)
{
    PyObject *exc, *value;
    if (err->nomem) return PyErr_NoMemory();
    exc = PyObject_CallFunction(LineError, "s", err->msg);
    if (exc == NULL) return NULL;
    if ((value = PyUnicode_FromString(err->what)) == NULL ||
        PyObject_SetAttrString(exc, "what", value) < 0)
        goto done;
    Py_DECREF(value);
    if ((value = PyLong_FromSsize_t(err->line)) == NULL ||
        PyObject_SetAttrString(exc, "line", value) < 0)
        goto done;
    Py_DECREF(value);
    if ((value = PyLong_FromLong(err->column)) == NULL ||
        PyObject_SetAttrString(exc, "column", value) < 0)
        goto done;
    PyErr_SetObject(LineError, exc);
done:
    Py_XDECREF(value);
    Py_DECREF(exc);
    return NULL;
}

static void release_buffer(Buf *out)
{
    if (out->bytes == NULL || out->bytes_left) free(out->p);
    Py_CLEAR(out->bytes);
    out->p = NULL;
    out->len = out->cap = 0;
}

/* The output of one call is written straight into a bytes object sized from the input
 * (the GIL held here): growing a buffer from small cost page faults and copies on every
 * doubling (measured: a third of the time), and copying it into a bytes object at the
 * end held a row of hundreds of MB twice. The output is about 1.4 times the input for
 * pgbench's rows; pages never written are never touched, so the slack costs no memory. */
static int start_buffer(Buf *out, size_t input)
{
    size_t cap = input + input / 2 + 4096;
    out->len = 0;
    out->bytes_left = 0;
    out->bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
    if (out->bytes == NULL) return -1;
    out->p = PyBytes_AS_STRING(out->bytes);
    out->cap = cap;
    return 0;
}

/* The result as a bytes object (GIL held); the buffer is released either way. */
static PyObject *finish_buffer(Buf *out)
{
    PyObject *result;
    if (out->bytes != NULL && !out->bytes_left) {
        result = out->bytes;
        out->bytes = NULL;
        out->p = NULL; /* the result's now: release_buffer must not free it */
        if (_PyBytes_Resize(&result, (Py_ssize_t)out->len) < 0) return NULL;
        return result;
    }
    result = PyBytes_FromStringAndSize(out->p ? out->p : "", (Py_ssize_t)out->len);
    release_buffer(out);
    return result;
}

/* ------------------------------------------------------ JSON string escaping */

/* PostgreSQL's escape_json: \" \\ \b \f \n \r \t, other bytes below 0x20 as \u00xx
 * (lowercase hex), everything else (UTF-8 included) as it is. */
static unsigned char json_special[256];
static const char hexdigits[] = "0123456789abcdef";

static void init_tables(void)
{
    int c;
    for (c = 0; c < 0x20; c++) json_special[c] = 1;
    json_special['"'] = 1;
    json_special['\\'] = 1;
}

/* The end of the run of bytes from s[i] that need no escape (none JSON-special: below
 * 0x20, '"' or '\\'), eight bytes at a time where it can: the classic "has a byte less
 * than / equal to" word tests, exact here because a hit falls back to the byte loop. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline size_t plain_run(const char *s, size_t i, size_t n)
{
    while (i + 8 <= n) {
        uint64_t v, q, b;
        memcpy(&v, s + i, 8);
        q = v ^ (ONES * '"');
        b = v ^ (ONES * '\\');
        if (((v - ONES * 0x20) & ~v & HIGHS) | ((q - ONES) & ~q & HIGHS) |
            ((b - ONES) & ~b & HIGHS))
            break;
        i += 8;
    }
    while (i < n && !json_special[(unsigned char)s[i]]) i++;
    return i;
}

/* Append the JSON escape of s[0:n] (no quotes). Reserves as it goes. */
static int json_escape(Buf *out, const char *s, size_t n, Err *err)
{
    size_t i = 0;
    RESERVE(out, n + 8);
    while (i < n) {
        size_t run = i;
        run = plain_run(s, run, n);
        if (run > i) {
            RESERVE(out, run - i + 8);
            PUTS(out, s + i, run - i);
            i = run;
            if (i >= n) break;
        }
        {
            unsigned char c = (unsigned char)s[i++];
            RESERVE(out, 6 + (n - i));
            switch (c) {
            case '"': PUTS(out, "\\\"", 2); break;
            case '\\': PUTS(out, "\\\\", 2); break;
            case '\b': PUTS(out, "\\b", 2); break;
            case '\f': PUTS(out, "\\f", 2); break;
            case '\n': PUTS(out, "\\n", 2); break;
            case '\r': PUTS(out, "\\r", 2); break;
            case '\t': PUTS(out, "\\t", 2); break;
            default:
                PUTS(out, "\\u00", 4);
                PUT(out, hexdigits[c >> 4]);
                PUT(out, hexdigits[c & 15]);
            }
        }
    }
    return 0;
}

/* PostgreSQL's IsValidJsonNumber: the JSON number grammar, nothing else. */
static int is_json_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-') i++;
    if (i >= n) return 0;
    if (s[i] == '0')
        i++;
    else if (s[i] >= '1' && s[i] <= '9')
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    else
        return 0;
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || s[i] < '0' || s[i] > '9') return 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || s[i] < '0' || s[i] > '9') return 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    }
    return i == n;
}

/* ------------------------------------------------------------ COPY text input */

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* ---------------------------------------------------------- dump: COPY -> JSON */

enum {
    K_NUMBER = 'n',      /* int2/4/8, numeric: a JSON number, or a string when not one */
    K_FLOAT = 'f',       /* float4/8: as K_NUMBER, and "-0" as a string */
    K_BOOL = 'b',        /* t/f -> true/false */
    K_STRING = 's',      /* the text form as a JSON string */
    K_TIMESTAMP = 't',   /* ISO "date time" -> "dateTtime" */
    K_TIMESTAMPTZ = 'z', /* and the offset "+hh" -> "+hh:mm" (to_json's XSD style) */
    K_RAW = 'r',         /* JSON the server rendered: unescaped, written as it is */
};

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* to_json's timestamp rendering from the ISO DateStyle's text: "T" between date and time
 * and, for timestamptz, minutes always in the offset. The shape is checked strictly:
 * YYYY[Y...]-MM-DD HH:MM:SS[.f+][+-hh[:mm[:ss]]][ BC], or infinity / -infinity. */
static int put_timestamp(Buf *out, const char *s, size_t n, int with_tz, Err *err,
                         Py_ssize_t line, int col)
{
    size_t i = 0, tz;
    if ((n == 8 && memcmp(s, "infinity", 8) == 0) || (n == 9 && memcmp(s, "-infinity", 9) == 0)) {
        RESERVE(out, n + 2);
        PUT(out, '"');
        PUTS(out, s, n);
        PUT(out, '"');
        return 0;
    }
    while (i < n && is_digit(s[i])) i++;
    if (i < 4 || i + 15 > n || s[i] != '-' || !is_digit(s[i + 1]) || !is_digit(s[i + 2]) ||
        s[i + 3] != '-' || !is_digit(s[i + 4]) || !is_digit(s[i + 5]) || s[i + 6] != ' ' ||
        !is_digit(s[i + 7]) || !is_digit(s[i + 8]) || s[i + 9] != ':' ||
        !is_digit(s[i + 10]) || !is_digit(s[i + 11]) || s[i + 12] != ':' ||
        !is_digit(s[i + 13]) || !is_digit(s[i + 14]))
        goto bad;
    tz = i + 15;
    if (tz < n && s[tz] == '.') {
        tz++;
        if (tz >= n || !is_digit(s[tz])) goto bad;
        while (tz < n && is_digit(s[tz])) tz++;
    }
    RESERVE(out, n + 8);
    PUT(out, '"');
    PUTS(out, s, i + 6);
    PUT(out, 'T');
    PUTS(out, s + i + 7, tz - (i + 7));
    if (with_tz) {
        size_t j = tz;
        if (j + 3 > n || (s[j] != '+' && s[j] != '-') || !is_digit(s[j + 1]) ||
            !is_digit(s[j + 2]))
            goto bad;
        j += 3;
        if (j < n && s[j] == ':') {
            if (j + 3 > n || !is_digit(s[j + 1]) || !is_digit(s[j + 2])) goto bad;
            j += 3;
            if (j < n && s[j] == ':') {
                if (j + 3 > n || !is_digit(s[j + 1]) || !is_digit(s[j + 2])) goto bad;
                j += 3;
            }
            PUTS(out, s + tz, j - tz);
        } else {
            PUTS(out, s + tz, 3);
            PUTS(out, ":00", 3);
        }
        tz = j;
    }
    if (tz < n) {
        if (n - tz != 3 || memcmp(s + tz, " BC", 3) != 0) goto bad;
        PUTS(out, " BC", 3);
    }
    PUT(out, '"');
    return 0;
bad:
    err_set(err, line, col, "unexpected timestamp text from the server");
    return -1;
}

/* One decoded COPY escape at s[*i] (just after the backslash), as COPY's text input reads
 * it; returns the byte. */
static unsigned char copy_escape_at(const char *s, size_t n, size_t *i)
{
    unsigned char c = (unsigned char)s[(*i)++];
    switch (c) {
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'v': return '\v';
    case 'x': {
        int v = 0, d, k = 0;
        while (k < 2 && *i < n && (d = hexval((unsigned char)s[*i])) >= 0) {
            v = v * 16 + d;
            (*i)++;
            k++;
        }
        return k == 0 ? 'x' : (unsigned char)v;
    }
    default:
        if (c >= '0' && c <= '7') {
            int v = c - '0', k = 1;
            while (k < 3 && *i < n && s[*i] >= '0' && s[*i] <= '7') {
                v = v * 8 + (s[*i] - '0');
                (*i)++;
                k++;
            }
            return (unsigned char)(v & 0xff);
        }
        return c;
    }
}

/* The COPY text field starting at s[*i], up to its tab or newline (left at *i), decoded
 * and written in one pass: as a quoted JSON string (json != 0), or as it is (server
 * rendered JSON). Runs of plain bytes are copied whole. */
static int put_copy_field(Buf *out, const char *s, size_t n, size_t *pi, int json, Err *err,
                          Py_ssize_t line, int col)
{
    size_t i = *pi;
    RESERVE(out, 2);
    if (json) PUT(out, '"');
    for (;;) {
        size_t run = i;
        unsigned char c;
        run = plain_run(s, run, n);
        if (run > i) {
            RESERVE(out, run - i + 8);
            PUTS(out, s + i, run - i);
            i = run;
        }
        if (i >= n) {
            err_set(err, line, col, "the line ends early");
            return -1;
        }
        c = (unsigned char)s[i];
        if (c == '\t' || c == '\n') break;
        i++;
        if (c == '\\') {
            if (i >= n || s[i] == '\n') {
                /* COPY TO writes a newline in a value as \n: a raw one here ends the row */
                err_set(err, line, col, "the line ends early");
                return -1;
            }
            c = copy_escape_at(s, n, &i);
        }
        RESERVE(out, 8);
        if (!json) {
            if (c == '\n' || c == '\r') {
                err_set(err, line, col, "unexpected JSON from the server");
                return -1;
            }
            PUT(out, c);
            continue;
        }
        switch (c) {
        case '"': PUTS(out, "\\\"", 2); break;
        case '\\': PUTS(out, "\\\\", 2); break;
        case '\b': PUTS(out, "\\b", 2); break;
        case '\f': PUTS(out, "\\f", 2); break;
        case '\n': PUTS(out, "\\n", 2); break;
        case '\r': PUTS(out, "\\r", 2); break;
        case '\t': PUTS(out, "\\t", 2); break;
        default:
            if (c < 0x20) {
                PUTS(out, "\\u00", 4);
                PUT(out, hexdigits[c >> 4]);
                PUT(out, hexdigits[c & 15]);
            } else
                PUT(out, c);
        }
    }
    if (json) PUT(out, '"');
    *pi = i;
    return 0;
}

static int put_quoted(Buf *out, const char *s, size_t n, Err *err)
{
    RESERVE(out, 1);
    PUT(out, '"');
    if (json_escape(out, s, n, err) < 0) return -1;
    RESERVE(out, 1);
    PUT(out, '"');
    return 0;
}

typedef struct {
    const char *kinds;
    Py_ssize_t ncols;
    const char **prefixes;
    Py_ssize_t *prefix_lens;
} RowShape;

static int copy_to_json(const char *s, size_t n, const RowShape *shape, Buf *out,
                        Py_ssize_t *rows_out, size_t *longest_out, Err *err)
{
    size_t i = 0, longest = 0;
    Py_ssize_t line = 0;
    int rc = -1;
    while (i < n) {
        size_t line_start = out->len;
        int col;
        if (shape->ncols == 0) {
            if (s[i] != '\n') {
                err_set(err, line, -1, "a row of a table without columns has a value");
                goto done;
            }
        }
        for (col = 0; col < shape->ncols; col++) {
            const char *f = s + i;
            size_t len, e = i;
            char kind = shape->kinds[col];
            if ((kind == K_STRING || kind == K_RAW) &&
                !(i + 2 < n && s[i] == '\\' && s[i + 1] == 'N' &&
                  (s[i + 2] == '\t' || s[i + 2] == '\n'))) {
                /* strings: decoded and escaped in one pass, to the field's end */
                size_t before;
                RESERVE(out, (size_t)shape->prefix_lens[col] + 8);
                PUTS(out, shape->prefixes[col], (size_t)shape->prefix_lens[col]);
                before = out->len;
                if (put_copy_field(out, s, n, &i, kind == K_STRING, err, line, col) < 0)
                    goto done;
                if (kind == K_RAW && out->len == before) {
                    err_set(err, line, col, "unexpected JSON from the server");
                    goto done;
                }
                if ((s[i] == '\n') != (col == shape->ncols - 1)) {
                    err_set(err, line, col, "the row has a different number of columns");
                    goto done;
                }
                i++;
                continue;
            }
            while (e < n && s[e] != '\t' && s[e] != '\n') e++;
            if (e >= n) {
                err_set(err, line, col, "the line ends early");
                goto done;
            }
            if ((s[e] == '\n') != (col == shape->ncols - 1)) {
                err_set(err, line, col, "the row has a different number of columns");
                goto done;
            }
            len = e - i;
            if (out->len + (size_t)shape->prefix_lens[col] + 8 > out->cap &&
                buf_grow(out, (size_t)shape->prefix_lens[col] + 8) < 0) {
                err_set(err, -1, -1, "out of memory");
                goto done;
            }
            PUTS(out, shape->prefixes[col], (size_t)shape->prefix_lens[col]);
            i = e + 1;
            if (len == 2 && f[0] == '\\' && f[1] == 'N') {
                PUTS(out, "null", 4);
                continue;
            }
            switch (kind) {
            case K_NUMBER:
            case K_FLOAT:
                if (memchr(f, '\\', len) != NULL) {
                    err_set(err, line, col, "unexpected number text from the server");
                    goto done;
                }
                if (is_json_number(f, len) && !(kind == K_FLOAT && len == 2 && f[0] == '-' && f[1] == '0')) {
                    if (out->len + len > out->cap && buf_grow(out, len) < 0) {
                        err_set(err, -1, -1, "out of memory");
                        goto done;
                    }
                    PUTS(out, f, len);
                } else if (put_quoted(out, f, len, err) < 0)
                    goto done;
                break;
            case K_BOOL:
                if (len == 1 && f[0] == 't')
                    PUTS(out, "true", 4);
                else if (len == 1 && f[0] == 'f')
                    PUTS(out, "false", 5);
                else {
                    err_set(err, line, col, "unexpected boolean text from the server");
                    goto done;
                }
                break;
            case K_TIMESTAMP:
            case K_TIMESTAMPTZ:
                if (put_timestamp(out, f, len, kind == K_TIMESTAMPTZ, err, line, col) < 0)
                    goto done;
                break;
            default:
                err_set(err, line, col, "unknown column kind");
                goto done;
            }
        }
        if (shape->ncols == 0) {
            i++;
            if (out->len + 3 > out->cap && buf_grow(out, 3) < 0) {
                err_set(err, -1, -1, "out of memory");
                goto done;
            }
            PUTS(out, "{}\n", 3);
        } else {
            if (out->len + 2 > out->cap && buf_grow(out, 2) < 0) {
                err_set(err, -1, -1, "out of memory");
                goto done;
            }
            PUTS(out, "}\n", 2);
        }
        if (out->len - line_start > longest) longest = out->len - line_start;
        line++;
    }
    *rows_out = line;
    *longest_out = longest;
    rc = 0;
done:
    return rc;
}

static int binary_to_json(const char *data, size_t n, const RowShape *shape, Buf *out,
                          Py_ssize_t *rows_out, size_t *longest_out, Err *err);

/* The dump's converters, text (copy_to_json) or binary (binary_to_json), as Python
 * calls them: (data, kinds, prefixes) -> (ndjson, rows, longest line). */
static PyObject *convert_rows(PyObject *args, int binary)
{
    Py_buffer data, kinds;
    PyObject *prefixes, *result = NULL;
    RowShape shape = {NULL, 0, NULL, NULL};
    Buf buffer = {NULL, 0, 0, NULL, 0}, *out = &buffer;
    Err err = {{0}, 0, "", -1, -1};
    Py_ssize_t rows = 0, k;
    size_t longest = 0;
    int rc;
    if (!PyArg_ParseTuple(args, "y*y*O!", &data, &kinds, &PyTuple_Type, &prefixes)) return NULL;
    shape.ncols = kinds.len;
    shape.kinds = kinds.buf;
    if (PyTuple_GET_SIZE(prefixes) != kinds.len) {
        PyErr_SetString(PyExc_ValueError, "one prefix per column");
        goto fail;
    }
    shape.prefixes = PyMem_Malloc(sizeof(char *) * (size_t)(kinds.len + 1));
    shape.prefix_lens = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(kinds.len + 1));
    if (!shape.prefixes || !shape.prefix_lens) {
        PyErr_NoMemory();
        goto fail;
    }
    for (k = 0; k < kinds.len; k++) {
        PyObject *p = PyTuple_GET_ITEM(prefixes, k);
        char *ps;
        if (PyBytes_AsStringAndSize(p, &ps, &shape.prefix_lens[k]) < 0) goto fail;
        shape.prefixes[k] = ps;
    }
    if (!binary && data.len > 0 && ((const char *)data.buf)[data.len - 1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "the data does not end with a whole line");
        goto fail;
    }
    /* binary: bytea doubles, so room for twice the input (more is grown) */
    if (start_buffer(out, binary ? (size_t)data.len + (size_t)data.len : (size_t)data.len) < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    if (binary)
        rc = binary_to_json(data.buf, (size_t)data.len, &shape, out, &rows, &longest, &err);
    else
        rc = copy_to_json(data.buf, (size_t)data.len, &shape, out, &rows, &longest, &err);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        raise_err(&err);
        goto fail;
    }
    {
        PyObject *bytes = finish_buffer(out);
        if (bytes == NULL) goto fail;
        result = Py_BuildValue("(Nnn)", bytes, rows, (Py_ssize_t)longest);
    }
fail:
    release_buffer(out);
    PyMem_Free(shape.prefixes);
    PyMem_Free(shape.prefix_lens);
    PyBuffer_Release(&data);
    PyBuffer_Release(&kinds);
    return result;
}

static PyObject *py_copy_to_ndjson(PyObject *self, PyObject *args)
{
    return convert_rows(args, 0);
}

/* ------------------------------------------------------ dump: COPY binary -> JSON */

/* The same lines from COPY's binary format: each value's send form rendered exactly as
 * its output function and the converter above would write it (the session's TimeZone is
 * UTC, its DateStyle ISO, its extra_float_digits 3). Per column: */
enum {
    D_INT2 = '2',
    D_INT4 = '4',
    D_INT8 = '8',
    D_NUMERIC = 'N',
    D_FLOAT4 = 'e',
    D_FLOAT8 = 'd',
    D_BOOL = 'b',
    D_TIMESTAMP = 't',
    D_TIMESTAMPTZ = 'z',
    D_DATE = 'D',
    D_TIME = 'T',
    D_TIMETZ = 'Z',
    D_INTERVAL = 'I', /* in the iso_8601 IntervalStyle the session pins */
    D_UUID = 'u',
    D_BYTEA = 'x',
    D_STRING = 's', /* text types, enums, json: the bytes as a JSON string */
    D_JSONB = 'j',  /* jsonb: a version byte (1), then its text as a JSON string */
    D_RAW = 'r',    /* JSON the server rendered, sent as text: written as it is */
};

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be64(const unsigned char *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/* The decimal digits of v at p (at most 20); returns how many. */
static int put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0, k;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (k = 0; k < n; k++) p[k] = tmp[n - 1 - k];
    return n;
}

static int put_i64(char *p, int64_t v)
{
    if (v < 0) {
        p[0] = '-';
        return 1 + put_u64(p + 1, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(p, (uint64_t)v);
}

/* v zero-padded to at least width digits */
static int put_padded(char *p, uint64_t v, int width)
{
    char tmp[20];
    int n = put_u64(tmp, v), k = 0;
    while (n + k < width) p[k++] = '0';
    memcpy(p + k, tmp, (size_t)n);
    return n + k;
}

/* numeric_send's fields as get_str_from_var writes them (base 10000 digits). */
static int put_numeric(Buf *out, const unsigned char *f, size_t len, Err *err, Py_ssize_t line,
                       int col)
{
    int ndigits, weight, d, i;
    uint16_t sign, dscale;
    char *p;
    if (len < 8) goto bad;
    ndigits = (int16_t)be16(f);
    weight = (int16_t)be16(f + 2);
    sign = be16(f + 4);
    dscale = be16(f + 6);
    if (ndigits < 0 || len != 8 + 2 * (size_t)ndigits) goto bad;
    if (sign == 0xC000 || sign == 0xD000 || sign == 0xF000) {
        const char *s = sign == 0xC000 ? "\"NaN\"" : sign == 0xD000 ? "\"Infinity\"" : "\"-Infinity\"";
        RESERVE(out, 12);
        PUTS(out, s, strlen(s));
        return 0;
    }
    if ((sign != 0 && sign != 0x4000) || (dscale & 0xC000)) goto bad;
    for (i = 0; i < ndigits; i++)
        if (be16(f + 8 + 2 * i) > 9999) goto bad;
    /* sign, the integer part's digits (4 per base digit), point, dscale digits */
    RESERVE(out, 2 + 4 * (size_t)(weight > 0 ? weight + 1 : 1) + 1 + (size_t)dscale + 4);
    p = out->p + out->len;
    if (sign == 0x4000) *p++ = '-';
    if (weight < 0) {
        d = weight + 1;
        *p++ = '0';
    } else {
        for (d = 0; d <= weight; d++) {
            int dig = d < ndigits ? be16(f + 8 + 2 * d) : 0, d1, putit = d > 0;
            d1 = dig / 1000;
            dig -= d1 * 1000;
            putit |= d1 > 0;
            if (putit) *p++ = (char)('0' + d1);
            d1 = dig / 100;
            dig -= d1 * 100;
            putit |= d1 > 0;
            if (putit) *p++ = (char)('0' + d1);
            d1 = dig / 10;
            dig -= d1 * 10;
            putit |= d1 > 0;
            if (putit) *p++ = (char)('0' + d1);
            *p++ = (char)('0' + dig);
        }
    }
    if (dscale > 0) {
        char *end;
        *p++ = '.';
        end = p + dscale;
        for (i = 0; i < dscale; d++, i += 4) {
            int dig = d >= 0 && d < ndigits ? be16(f + 8 + 2 * d) : 0;
            p[0] = (char)('0' + dig / 1000);
            p[1] = (char)('0' + dig / 100 % 10);
            p[2] = (char)('0' + dig / 10 % 10);
            p[3] = (char)('0' + dig % 10);
            p += 4;
        }
        p = end;
    }
    out->len = (size_t)(p - out->p);
    return 0;
bad:
    err_set(err, line, col, "unexpected numeric from the server");
    return -1;
}

/* Floats as float4out/float8out write them with extra_float_digits > 0 (PostgreSQL 12+,
 * src/common/d2s.c and f2s.c, Ryu): the shortest decimal strictly inside the value's
 * rounding interval (PostgreSQL builds Ryu with STRICTLY_SHORTEST 0: never the exact
 * midpoint between two floats), the nearest to the value of those, in fixed notation for
 * decimal exponents -4 to 14 (float4: 5), else d.ddde+XX. Ryu's search runs here step for
 * step on the interval's ends and the value scaled to integers (vm, vp, vr); Ryu reads
 * those floors from tables of powers of 5, here they are computed exactly: in 128-bit
 * arithmetic where they fit (doubles from about 2.4e-4 to 1.7e38), else in a bignum. */

static unsigned __int128 pow10_128[39];

static void init_pow10(void)
{
    int k;
    pow10_128[0] = 1;
    for (k = 1; k < 39; k++) pow10_128[k] = pow10_128[k - 1] * 10;
}

/* Non-negative integers of up to 40 32-bit words (1280 bits: a double's m * 2^e2 or
 * m * 10^k at Ryu's scale needs at most 1140), least significant word first. */
typedef struct {
    uint32_t w[40];
    int n;
} Big;

static void big_set(Big *b, uint64_t v)
{
    b->w[0] = (uint32_t)v;
    b->w[1] = (uint32_t)(v >> 32);
    b->n = b->w[1] ? 2 : 1;
}

static void big_mul(Big *b, uint32_t m)
{
    uint64_t carry = 0;
    int i;
    for (i = 0; i < b->n; i++) {
        carry += (uint64_t)b->w[i] * m;
        b->w[i] = (uint32_t)carry;
        carry >>= 32;
    }
    if (carry) b->w[b->n++] = (uint32_t)carry;
}

/* b /= d; returns whether nothing was left over */
static int big_div(Big *b, uint32_t d)
{
    uint64_t rest = 0;
    int i;
    for (i = b->n - 1; i >= 0; i--) {
        uint64_t cur = rest << 32 | b->w[i];
        b->w[i] = (uint32_t)(cur / d);
        rest = cur % d;
    }
    while (b->n > 1 && b->w[b->n - 1] == 0) b->n--;
    return rest == 0;
}

static void big_shl(Big *b, int s)
{
    int words = s / 32, bits = s % 32, i;
    uint32_t top = 0;
    if (bits) {
        for (i = 0; i < b->n; i++) {
            uint32_t w = b->w[i];
            b->w[i] = w << bits | top;
            top = w >> (32 - bits);
        }
        if (top) b->w[b->n++] = top;
    }
    if (words) {
        memmove(b->w + words, b->w, sizeof(uint32_t) * (size_t)b->n);
        memset(b->w, 0, sizeof(uint32_t) * (size_t)words);
        b->n += words;
    }
}

/* b >> s, as a uint64 (at Ryu's scales the floors fit) */
static uint64_t big_shr64(const Big *b, int s)
{
    int words = s / 32, i;
    unsigned __int128 t = 0;
    for (i = 2; i >= 0; i--) t = t << 32 | (words + i < b->n ? b->w[words + i] : 0);
    return (uint64_t)(t >> (s % 32));
}

/* floor(x * 2^e2 / 10^e10), e2 and e10 both >= 0 or both <= 0, exactly: in 128 bits where
 * it fits, else in a Big */
static uint64_t floor_scaled(uint64_t x, int e2, int e10)
{
    Big b;
    int q;
    if (e2 >= 0) {
        if (64 - __builtin_clzll(x) + e2 <= 127 && e10 <= 38)
            return (uint64_t)(((unsigned __int128)x << e2) / pow10_128[e10]);
        big_set(&b, x);
        big_shl(&b, e2);
        for (q = e10; q >= 9; q -= 9) big_div(&b, 1000000000);
        if (q) big_div(&b, (uint32_t)pow10_128[q]);
        return (uint64_t)b.w[0] | (b.n > 1 ? (uint64_t)b.w[1] << 32 : 0);
    }
    if (-e10 <= 38 && -e2 < 128 && (unsigned __int128)x <= ~(unsigned __int128)0 / pow10_128[-e10])
        return (uint64_t)(((unsigned __int128)x * pow10_128[-e10]) >> -e2);
    big_set(&b, x);
    for (q = -e10; q >= 9; q -= 9) big_mul(&b, 1000000000);
    if (q) big_mul(&b, (uint32_t)pow10_128[q]);
    return big_shr64(&b, -e2);
}

static int pow5_factor(uint64_t v)
{
    int n = 0;
    while (v % 5 == 0) {
        v /= 5;
        n++;
    }
    return n;
}

/* PostgreSQL's d2d (single: f2d) with STRICTLY_SHORTEST 0, step for step, on exact floors
 * in place of Ryu's tables: m2 * 2^e2 is the value, e2 lowered by 2 for the quarter units
 * of mv = 4 * m2. *out is the digits, *exp10 the exponent of the last one. */
static void shortest_digits(uint64_t m2, int e2, int mm_shift, int single, uint64_t *out,
                            int *exp10)
{
    const uint64_t mv = 4 * m2, mp = mv + 2, mm = mv - 1 - (uint64_t)mm_shift;
    uint64_t vr, vp, vm;
    int q, e10, removed = 0, vr_tz = 0;
    uint8_t last = 0;
    if (e2 >= 0) {
        /* log10(2^e2); d2s one less above 2^3 */
        q = (int)(((uint64_t)e2 * 78913) >> 18) - (!single && e2 > 3);
        e10 = q;
    } else {
        /* log10(5^-e2); d2s one less above -e2 = 1 */
        q = (int)(((uint64_t)-e2 * 732923) >> 20) - (!single && -e2 > 1);
        e10 = q + e2;
    }
    vr = floor_scaled(mv, e2, e10);
    vp = floor_scaled(mp, e2, e10);
    vm = floor_scaled(mm, e2, e10);
    if (single && q != 0 && (vp - 1) / 10 <= vm / 10)
        last = (uint8_t)(floor_scaled(mv, e2, e10 - 1) % 10); /* f2s: one digit more */
    if (e2 >= 0) {
        if (q <= (single ? 9 : 21)) {
            if (mv % 5 == 0)
                vr_tz = pow5_factor(mv) >= q;
            else
                vp -= pow5_factor(mp) >= q; /* the upper end is not taken */
        }
    } else if (q <= 1) {
        vr_tz = 1;
        vp--;
    } else if (q < (single ? 31 : 63)) {
        vr_tz = (mv & ((UINT64_C(1) << (q - 1)) - 1)) == 0; /* Ryu's bound, as it is */
    }
    while (vp / 10 > vm / 10) {
        vr_tz &= last == 0;
        last = (uint8_t)(vr % 10);
        vr /= 10;
        vp /= 10;
        vm /= 10;
        removed++;
    }
    if (vr_tz && last == 5 && vr % 2 == 0) last = 4; /* exactly half: to even */
    *out = vr + (vr == vm || last >= 5);
    *exp10 = e10 + removed;
}

/* float4out (single) / float8out's text for the value of these bits into p; returns the
 * length. */
static int float_text(uint64_t bits, int single, char *p)
{
    const int mbits = single ? 23 : 52, ebits = single ? 8 : 11, bias = single ? 127 : 1023;
    const uint64_t mantissa = bits & ((UINT64_C(1) << mbits) - 1);
    const int exponent = (int)((bits >> mbits) & ((1u << ebits) - 1));
    const int sign = (int)((bits >> (mbits + ebits)) & 1);
    char digits[24];
    int n, x, k = 0, i;
    uint64_t out;
    if (exponent == (1 << ebits) - 1) {
        if (mantissa) {
            memcpy(p, "NaN", 3);
            return 3;
        }
        if (sign) p[k++] = '-';
        memcpy(p + k, "Infinity", 8);
        return k + 8;
    }
    if (sign) p[k++] = '-';
    if (exponent == 0 && mantissa == 0) {
        p[k++] = '0';
        return k;
    }
    {
        uint64_t m2 = exponent ? (UINT64_C(1) << mbits) | mantissa : mantissa;
        int e2 = (exponent ? exponent : 1) - bias - mbits - 2, e10;
        shortest_digits(m2, e2, mantissa != 0 || exponent <= 1, single, &out, &e10);
        n = put_u64(digits, out);
        x = e10 + n - 1;
    }
    if (x >= -4 && x < (single ? 6 : 15)) {
        if (x < 0) {
            memcpy(p + k, "0.", 2);
            k += 2;
            for (i = -1; i > x; i--) p[k++] = '0';
            memcpy(p + k, digits, (size_t)n);
            return k + n;
        }
        for (i = 0; i <= x || i < n; i++) {
            if (i == x + 1) p[k++] = '.';
            p[k++] = i < n ? digits[i] : '0';
        }
        return k;
    }
    p[k++] = digits[0];
    if (n > 1) {
        p[k++] = '.';
        memcpy(p + k, digits + 1, (size_t)(n - 1));
        k += n - 1;
    }
    p[k++] = 'e';
    p[k++] = x < 0 ? '-' : '+';
    return k + put_padded(p + k, (uint64_t)(x < 0 ? -x : x), 2);
}

/* PostgreSQL's j2date: a Julian day as year, month, day (proleptic Gregorian). */
static void j2date(int jd, int *year, int *month, int *day)
{
    unsigned int julian = (unsigned int)jd, quad, extra;
    int y;
    julian += 32044;
    quad = julian / 146097;
    extra = (julian - quad * 146097) * 4 + 3;
    julian += 60 + quad * 3 + extra / 146097;
    quad = julian / 1461;
    julian -= quad * 1461;
    y = (int)(julian * 4 / 1461);
    julian = ((y != 0) ? ((julian + 305) % 365) : ((julian + 306) % 366)) + 123;
    y += (int)quad * 4;
    *year = y - 4800;
    quad = julian * 2141 / 65536;
    *day = (int)(julian - 7834 * quad / 256);
    *month = (int)((quad + 10) % 12 + 1);
}

#define POSTGRES_EPOCH_JDATE 2451545
#define USECS_PER_DAY INT64_C(86400000000)

/* "YYYY-MM-DD" of a Julian day as the ISO DateStyle writes it (years before 1 as
 * 1 - year, with *bc set). Returns the length. */
static int put_ymd(char *p, int jd, int *bc)
{
    int y, m, d, k;
    j2date(jd, &y, &m, &d);
    *bc = y <= 0;
    k = put_padded(p, (uint64_t)(y > 0 ? y : -(y - 1)), 4);
    p[k++] = '-';
    k += put_padded(p + k, (uint64_t)m, 2);
    p[k++] = '-';
    k += put_padded(p + k, (uint64_t)d, 2);
    return k;
}

/* timestamp(tz)_send's microseconds since 2000-01-01 as put_timestamp writes the text
 * form (the session is in UTC: the offset is always +00:00). */
static int put_binary_timestamp(Buf *out, int64_t t, int with_tz, Err *err, Py_ssize_t line,
                                int col)
{
    int64_t date, time;
    int k = 1, bc;
    char *p;
    RESERVE(out, 64);
    p = out->p + out->len;
    if (t == INT64_MAX || t == INT64_MIN) {
        const char *s = t == INT64_MAX ? "\"infinity\"" : "\"-infinity\"";
        PUTS(out, s, strlen(s));
        return 0;
    }
    date = t / USECS_PER_DAY;
    time = t - date * USECS_PER_DAY;
    if (time < 0) {
        time += USECS_PER_DAY;
        date -= 1;
    }
    date += POSTGRES_EPOCH_JDATE;
    if (date < 0 || date > INT32_MAX) {
        err_set(err, line, col, "unexpected timestamp from the server");
        return -1;
    }
    p[0] = '"';
    k += put_ymd(p + k, (int)date, &bc);
    p[k++] = 'T';
    k += put_padded(p + k, (uint64_t)(time / INT64_C(3600000000)), 2);
    time %= INT64_C(3600000000);
    p[k++] = ':';
    k += put_padded(p + k, (uint64_t)(time / 60000000), 2);
    time %= 60000000;
    p[k++] = ':';
    k += put_padded(p + k, (uint64_t)(time / 1000000), 2);
    time %= 1000000;
    if (time) {
        int digits = 6;
        while (time % 10 == 0) {
            time /= 10;
            digits--;
        }
        p[k++] = '.';
        k += put_padded(p + k, (uint64_t)time, digits);
    }
    if (with_tz) {
        memcpy(p + k, "+00:00", 6);
        k += 6;
    }
    if (bc) {
        memcpy(p + k, " BC", 3);
        k += 3;
    }
    p[k++] = '"';
    out->len += (size_t)k;
    return 0;
}

/* seconds, and a fraction of up to six digits without its trailing zeros (AppendSeconds) */
static int put_seconds(char *p, int64_t sec, int64_t fsec, int pad)
{
    int k = pad ? put_padded(p, (uint64_t)sec, 2) : put_u64(p, (uint64_t)sec);
    if (fsec) {
        int digits = 6;
        while (fsec % 10 == 0) {
            fsec /= 10;
            digits--;
        }
        p[k++] = '.';
        k += put_padded(p + k, (uint64_t)fsec, digits);
    }
    return k;
}

/* time_send's microseconds since midnight as time_out writes them: HH:MM:SS[.f] */
static int time_text(char *p, int64_t t)
{
    int k = put_padded(p, (uint64_t)(t / INT64_C(3600000000)), 2);
    t %= INT64_C(3600000000);
    p[k++] = ':';
    k += put_padded(p + k, (uint64_t)(t / 60000000), 2);
    t %= 60000000;
    p[k++] = ':';
    return k + put_seconds(p + k, t / 1000000, t % 1000000, 1);
}

/* timetz's zone, seconds west of UTC, as EncodeTimezone writes it: +hh[:mm[:ss]] */
static int zone_text(char *p, int32_t tz)
{
    int64_t sec = tz < 0 ? -(int64_t)tz : tz, min = sec / 60, hour;
    int k = 0;
    sec -= min * 60;
    hour = min / 60;
    min -= hour * 60;
    p[k++] = tz <= 0 ? '+' : '-';
    k += put_padded(p + k, (uint64_t)hour, 2);
    if (sec != 0 || min != 0) {
        p[k++] = ':';
        k += put_padded(p + k, (uint64_t)min, 2);
    }
    if (sec != 0) {
        p[k++] = ':';
        k += put_padded(p + k, (uint64_t)sec, 2);
    }
    return k;
}

/* interval_send's microseconds, days and months as interval_out writes them in the
 * iso_8601 IntervalStyle (EncodeInterval): P1Y2M3DT4H5M6.5S, each part with its own sign,
 * PT0S for zero; infinity and -infinity (17+) */
static int interval_text(char *p, int64_t time, int32_t days, int32_t months)
{
    int64_t year = months / 12, mon = months % 12, hour, min, sec, fsec;
    int k = 0;
    if (time == INT64_MAX && days == INT32_MAX && months == INT32_MAX) {
        memcpy(p, "infinity", 8);
        return 8;
    }
    if (time == INT64_MIN && days == INT32_MIN && months == INT32_MIN) {
        memcpy(p, "-infinity", 9);
        return 9;
    }
    hour = time / INT64_C(3600000000);
    time -= hour * INT64_C(3600000000);
    min = time / 60000000;
    time -= min * 60000000;
    sec = time / 1000000;
    fsec = time - sec * 1000000;
    if (!year && !mon && !days && !hour && !min && !sec && !fsec) {
        memcpy(p, "PT0S", 4);
        return 4;
    }
    p[k++] = 'P';
#define ISO_PART(v, c)                  \
    if (v) {                            \
        k += put_i64(p + k, (int64_t)v); \
        p[k++] = c;                     \
    }
    ISO_PART(year, 'Y')
    ISO_PART(mon, 'M')
    ISO_PART(days, 'D')
    if (hour || min || sec || fsec) p[k++] = 'T';
    ISO_PART(hour, 'H')
    ISO_PART(min, 'M')
#undef ISO_PART
    if (sec || fsec) {
        if (sec < 0 || fsec < 0) p[k++] = '-';
        k += put_seconds(p + k, sec < 0 ? -sec : sec, fsec < 0 ? -fsec : fsec, 0);
        p[k++] = 'S';
    }
    return k;
}


/* Where the whole tuples of s[0..n) end (after COPY binary's trailer when it is there):
 * each tuple is a field count and that many (length, bytes) fields. */
static size_t binary_whole(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i + 2 <= n) {
        int16_t fields = (int16_t)be16(s + i);
        size_t j = i + 2;
        int k;
        if (fields == -1) return j;
        for (k = 0; k < fields; k++) {
            int32_t len;
            if (j + 4 > n) return i;
            len = (int32_t)be32(s + j);
            j += 4;
            if (len > 0) {
                if ((size_t)len > n - j) return i;
                j += (size_t)len;
            }
        }
        i = j;
    }
    return i;
}

static int binary_to_json(const char *data, size_t n, const RowShape *shape, Buf *out,
                          Py_ssize_t *rows_out, size_t *longest_out, Err *err)
{
    const unsigned char *s = (const unsigned char *)data;
    size_t i = 0, longest = 0;
    Py_ssize_t line = 0;
    while (i < n) {
        size_t line_start = out->len;
        int16_t fields;
        int col;
        if (i + 2 > n) goto cut;
        fields = (int16_t)be16(s + i);
        i += 2;
        if (fields == -1) {
            if (i != n) {
                err_set(err, line, -1, "data after the end of the COPY");
                return -1;
            }
            break;
        }
        if (fields != shape->ncols) {
            err_set(err, line, -1, "the row has a different number of columns");
            return -1;
        }
        for (col = 0; col < shape->ncols; col++) {
            const unsigned char *f;
            int32_t len;
            char kind = shape->kinds[col];
            if (i + 4 > n) goto cut;
            len = (int32_t)be32(s + i);
            i += 4;
            if (len < -1 || (len > 0 && (size_t)len > n - i)) goto cut;
            f = s + i;
            RESERVE(out, (size_t)shape->prefix_lens[col] + 64);
            PUTS(out, shape->prefixes[col], (size_t)shape->prefix_lens[col]);
            if (len == -1) {
                PUTS(out, "null", 4);
                continue;
            }
            i += (size_t)len;
            switch (kind) {
            case D_INT2:
                if (len != 2) goto bad;
                out->len += (size_t)put_i64(out->p + out->len, (int16_t)be16(f));
                break;
            case D_INT4:
                if (len != 4) goto bad;
                out->len += (size_t)put_i64(out->p + out->len, (int32_t)be32(f));
                break;
            case D_INT8:
                if (len != 8) goto bad;
                out->len += (size_t)put_i64(out->p + out->len, (int64_t)be64(f));
                break;
            case D_BOOL:
                if (len != 1 || f[0] > 1) goto bad;
                if (f[0])
                    PUTS(out, "true", 4);
                else
                    PUTS(out, "false", 5);
                break;
            case D_FLOAT4:
            case D_FLOAT8: {
                /* as K_FLOAT: a number, or a string where it is not one (and "-0") */
                uint64_t bits;
                char text[40];
                int k;
                if (len != (kind == D_FLOAT4 ? 4 : 8)) goto bad;
                bits = kind == D_FLOAT4 ? be32(f) : be64(f);
                k = float_text(bits, kind == D_FLOAT4, text);
                if (text[k - 1] >= '0' && text[k - 1] <= '9' && !(k == 2 && text[0] == '-' && text[1] == '0')) {
                    PUTS(out, text, (size_t)k);
                } else {
                    PUT(out, '"');
                    PUTS(out, text, (size_t)k);
                    PUT(out, '"');
                }
                break;
            }
            case D_NUMERIC:
                if (put_numeric(out, f, (size_t)len, err, line, col) < 0) return -1;
                break;
            case D_TIMESTAMP:
            case D_TIMESTAMPTZ:
                if (len != 8) goto bad;
                if (put_binary_timestamp(out, (int64_t)be64(f), kind == D_TIMESTAMPTZ, err, line,
                                         col) < 0)
                    return -1;
                break;
            case D_DATE: {
                int32_t d;
                int bc, k;
                if (len != 4) goto bad;
                d = (int32_t)be32(f);
                if (d == INT32_MIN || d == INT32_MAX) {
                    const char *t = d == INT32_MAX ? "\"infinity\"" : "\"-infinity\"";
                    PUTS(out, t, strlen(t));
                    break;
                }
                if ((int64_t)d + POSTGRES_EPOCH_JDATE < 0) goto bad;
                PUT(out, '"');
                k = put_ymd(out->p + out->len, d + POSTGRES_EPOCH_JDATE, &bc);
                out->len += (size_t)k;
                if (bc) PUTS(out, " BC", 3);
                PUT(out, '"');
                break;
            }
            case D_TIME:
            case D_TIMETZ:
            case D_INTERVAL: {
                char text[96];
                int k;
                if (kind == D_TIME && len == 8)
                    k = time_text(text, (int64_t)be64(f));
                else if (kind == D_TIMETZ && len == 12) {
                    k = time_text(text, (int64_t)be64(f));
                    k += zone_text(text + k, (int32_t)be32(f + 8));
                } else if (kind == D_INTERVAL && len == 16)
                    k = interval_text(text, (int64_t)be64(f), (int32_t)be32(f + 8),
                                      (int32_t)be32(f + 12));
                else
                    goto bad;
                RESERVE(out, (size_t)k + 2);
                PUT(out, '"');
                PUTS(out, text, (size_t)k);
                PUT(out, '"');
                break;
            }
            case D_UUID: {
                int k;
                if (len != 16) goto bad;
                PUT(out, '"');
                for (k = 0; k < 16; k++) {
                    if (k == 4 || k == 6 || k == 8 || k == 10) PUT(out, '-');
                    PUT(out, hexdigits[f[k] >> 4]);
                    PUT(out, hexdigits[f[k] & 15]);
                }
                PUT(out, '"');
                break;
            }
            case D_BYTEA: {
                int32_t k;
                char *p;
                RESERVE(out, 2 * (size_t)len + 8);
                PUTS(out, "\"\\\\x", 4);
                p = out->p + out->len;
                for (k = 0; k < len; k++) {
                    *p++ = hexdigits[f[k] >> 4];
                    *p++ = hexdigits[f[k] & 15];
                }
                out->len += 2 * (size_t)len;
                PUT(out, '"');
                break;
            }
            case D_JSONB:
                if (len < 1 || f[0] != 1) goto bad;
                if (put_quoted(out, (const char *)f + 1, (size_t)len - 1, err) < 0) return -1;
                break;
            case D_STRING:
                if (put_quoted(out, (const char *)f, (size_t)len, err) < 0) return -1;
                break;
            case D_RAW:
                if (len == 0 || memchr(f, '\n', (size_t)len) || memchr(f, '\r', (size_t)len)) {
                    err_set(err, line, col, "unexpected JSON from the server");
                    return -1;
                }
                RESERVE(out, (size_t)len);
                PUTS(out, f, (size_t)len);
                break;
            default:
                err_set(err, line, col, "unknown column kind");
                return -1;
            }
            continue;
        bad:
            err_set(err, line, col, "unexpected binary value from the server");
            return -1;
        }
        RESERVE(out, 3);
        if (shape->ncols == 0)
            PUTS(out, "{}\n", 3);
        else
            PUTS(out, "}\n", 2);
        if (out->len - line_start > longest) longest = out->len - line_start;
        line++;
    }
    *rows_out = line;
    *longest_out = longest;
    return 0;
cut:
    err_set(err, line, -1, "the tuple ends early");
    return -1;
}

static PyObject *py_binary_to_ndjson(PyObject *self, PyObject *args)
{
    return convert_rows(args, 1);
}

static PyObject *py_binary_whole(PyObject *self, PyObject *arg)
{
    Py_buffer data;
    size_t end;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    end = binary_whole(data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromSize_t(end);
}

static PyObject *py_json_string(PyObject *self, PyObject *arg)
{
    Py_buffer data;
    Buf out = {NULL, 0, 0, NULL, 0};
    Err err = {{0}, 0, "", -1, -1};
    PyObject *result = NULL;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    if (put_quoted(&out, data.buf, (size_t)data.len, &err) < 0)
        raise_err(&err);
    else
        result = PyBytes_FromStringAndSize(out.p, (Py_ssize_t)out.len);
    free(out.p);
    PyBuffer_Release(&data);
    return result;
}

/* ------------------------------------------------------- restore: JSON -> COPY */

enum {
    A_SKIP = 'x',   /* a column the target does not take: any JSON value, left out */
    A_SCALAR = 'j', /* the json encoding: number, string, true/false or null */
    A_TEXT = 't',   /* the text encoding: a string or null */
    A_ARRAY = 'a',  /* the array encoding: an array, a string (the text form) or null */
};

#define MAX_DEPTH 64 /* nesting of a skipped value (levels 0 to 64); arrays: MAXDIM is 6 */

typedef struct {
    const char *s;
    size_t n, i;
    Py_ssize_t line;
    int col;
    Err *err;
} Parser;

static int fail(Parser *p, const char *what)
{
    err_set(p->err, p->line, p->col, what);
    return -1;
}

static void skip_ws(Parser *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\r'))
        p->i++;
}

/* Levels of escaping applied to a string's characters on the way out. */
enum { LEVEL_NONE = 0, LEVEL_COPY = 1, LEVEL_ARRAY = 2 };

/* Append one decoded byte with the output's escaping. LEVEL_COPY: COPY text's
 * (backslash, newline, carriage return, tab); LEVEL_ARRAY: array_in's quoted element
 * (backslash, double quote) and then COPY's. */
static inline int put_escaped(Buf *out, unsigned char c, int level, Err *err)
{
    RESERVE(out, 4);
    if (level == LEVEL_ARRAY && (c == '"' || c == '\\')) {
        PUTS(out, "\\\\", 2); /* the array's backslash, escaped for COPY */
        if (c == '\\')
            PUTS(out, "\\\\", 2);
        else
            PUT(out, c);
        return 0;
    }
    if (level == LEVEL_NONE) {
        PUT(out, c);
        return 0;
    }
    switch (c) {
    case '\\': PUTS(out, "\\\\", 2); break;
    case '\n': PUTS(out, "\\n", 2); break;
    case '\r': PUTS(out, "\\r", 2); break;
    case '\t': PUTS(out, "\\t", 2); break;
    default: PUT(out, c);
    }
    return 0;
}

static int put_utf8(Buf *out, uint32_t cp, int level, Err *err)
{
    unsigned char b[4];
    int n, k;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | (cp >> 18));
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    for (k = 0; k < n; k++)
        if (put_escaped(out, b[k], level, err) < 0) return -1;
    return 0;
}

static int read_hex4(Parser *p, uint32_t *v)
{
    int k, d;
    *v = 0;
    if (p->i + 4 > p->n) return fail(p, "a \\u escape is cut short");
    for (k = 0; k < 4; k++) {
        d = hexval((unsigned char)p->s[p->i + k]);
        if (d < 0) return fail(p, "a \\u escape is not hexadecimal");
        *v = *v * 16 + (uint32_t)d;
    }
    p->i += 4;
    return 0;
}

static int valid_utf8(const unsigned char *p, size_t n);

/* A JSON string at p->i (its opening quote); its decoded bytes go to out with `level`'s
 * escaping (out may be NULL: only checked). Its raw bytes must be UTF-8 (docs/format.md;
 * RFC 8259): the server would refuse them only when the rows are sent, without naming the
 * line, and verify, which reads lines through here, would pass them. A run between
 * escapes holds whole characters (backslash, quote and control characters are ASCII, never
 * part of a multibyte sequence), so checking each run checks the string. */
static int parse_string(Parser *p, Buf *out, int level)
{
    Err *err = p->err;
    p->i++; /* the quote */
    for (;;) {
        size_t run = p->i;
        run = plain_run(p->s, run, p->n);
        if (!valid_utf8((const unsigned char *)p->s + p->i, run - p->i))
            return fail(p, "a string is not UTF-8");
        if (out != NULL && run > p->i) {
            /* no byte of the run needs an escape at any level: backslash, quote and
             * control characters are all JSON-special */
            RESERVE(out, run - p->i);
            PUTS(out, p->s + p->i, run - p->i);
        }
        p->i = run;
        if (p->i >= p->n) return fail(p, "a string is not closed");
        {
            unsigned char c = (unsigned char)p->s[p->i++];
            if (c == '"') return 0;
            if (c < 0x20) return fail(p, "a control character inside a string");
            /* a backslash */
            if (p->i >= p->n) return fail(p, "a string is not closed");
            c = (unsigned char)p->s[p->i++];
            switch (c) {
            case '"': case '\\': case '/': break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                uint32_t cp, lo;
                if (read_hex4(p, &cp) < 0) return -1;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p->i + 6 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u')
                        return fail(p, "a lone UTF-16 surrogate in a string");
                    p->i += 2;
                    if (read_hex4(p, &lo) < 0) return -1;
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return fail(p, "a lone UTF-16 surrogate in a string");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return fail(p, "a lone UTF-16 surrogate in a string");
                if (cp == 0) return fail(p, "\\u0000 cannot be stored in PostgreSQL text");
                if (out != NULL && put_utf8(out, cp, level, err) < 0) return -1;
                continue;
            }
            default: return fail(p, "an invalid escape in a string");
            }
            if (out != NULL && put_escaped(out, c, level, err) < 0) return -1;
        }
    }
}

static int parse_number(Parser *p, Buf *out)
{
    Err *err = p->err;
    size_t start = p->i;
    while (p->i < p->n) {
        char c = p->s[p->i];
        if (is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E')
            p->i++;
        else
            break;
    }
    if (!is_json_number(p->s + start, p->i - start)) return fail(p, "an invalid number");
    if (out != NULL) {
        RESERVE(out, p->i - start);
        PUTS(out, p->s + start, p->i - start);
    }
    return 0;
}

static int match_word(Parser *p, const char *word, size_t len)
{
    if (p->i + len <= p->n && memcmp(p->s + p->i, word, len) == 0) {
        p->i += len;
        return 1;
    }
    return 0;
}

/* Any JSON value, checked and left out. */
static int skip_value(Parser *p, int depth)
{
    char c;
    if (depth > MAX_DEPTH) return fail(p, "a value nested too deeply");
    skip_ws(p);
    if (p->i >= p->n) return fail(p, "the line ends early");
    c = p->s[p->i];
    if (c == '"') return parse_string(p, NULL, LEVEL_NONE);
    if (c == '[' || c == '{') {
        char close = c == '[' ? ']' : '}';
        int first = 1;
        p->i++;
        for (;;) {
            skip_ws(p);
            if (p->i < p->n && p->s[p->i] == close) {
                p->i++;
                return 0;
            }
            if (!first) {
                if (p->i >= p->n || p->s[p->i] != ',') return fail(p, "expected ','");
                p->i++;
                skip_ws(p);
            }
            first = 0;
            if (close == '}') {
                if (p->i >= p->n || p->s[p->i] != '"') return fail(p, "expected a key");
                if (parse_string(p, NULL, LEVEL_NONE) < 0) return -1;
                skip_ws(p);
                if (p->i >= p->n || p->s[p->i] != ':') return fail(p, "expected ':'");
                p->i++;
            }
            if (skip_value(p, depth + 1) < 0) return -1;
        }
    }
    if (match_word(p, "true", 4) || match_word(p, "false", 5) || match_word(p, "null", 4))
        return 0;
    return parse_number(p, NULL);
}

/* A JSON array as an array_in literal: {elem,elem}, elements quoted, NULL for null,
 * numbers as they are, true/false as t/f, nested arrays as nested braces. */
static int parse_array(Parser *p, Buf *out, char delim, int depth)
{
    Err *err = p->err;
    int first = 1;
    if (depth > 6) return fail(p, "an array with more than 6 dimensions");
    p->i++; /* [ */
    RESERVE(out, 1);
    PUT(out, '{');
    for (;;) {
        char c;
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ']') {
            p->i++;
            RESERVE(out, 1);
            PUT(out, '}');
            return 0;
        }
        if (!first) {
            if (p->i >= p->n || p->s[p->i] != ',') return fail(p, "expected ',' in an array");
            p->i++;
            skip_ws(p);
            /* the delimiter is COPY text like any other byte: CREATE TYPE takes any
             * character, and a tab or backslash written raw would split or change the
             * field */
            if (put_escaped(out, (unsigned char)delim, LEVEL_COPY, err) < 0) return -1;
        }
        first = 0;
        if (p->i >= p->n) return fail(p, "the line ends early");
        c = p->s[p->i];
        if (c == '[') {
            if (parse_array(p, out, delim, depth + 1) < 0) return -1;
        } else if (c == '"') {
            RESERVE(out, 1);
            PUT(out, '"');
            if (parse_string(p, out, LEVEL_ARRAY) < 0) return -1;
            RESERVE(out, 1);
            PUT(out, '"');
        } else if (match_word(p, "null", 4)) {
            RESERVE(out, 4);
            PUTS(out, "NULL", 4);
        } else if (match_word(p, "true", 4)) {
            RESERVE(out, 4);
            PUTS(out, "true", 4);
        } else if (match_word(p, "false", 5)) {
            RESERVE(out, 5);
            PUTS(out, "false", 5);
        } else if (c == '{') {
            return fail(p, "an object inside an array");
        } else if (parse_number(p, out) < 0)
            return -1;
    }
}

typedef struct {
    Py_ssize_t ncols;
    const char *actions;
    const char *delims;
    const char **names;
    Py_ssize_t *name_lens;
} LineShape;

/* The parts of a line both restore converters read the same way: its opening brace;
 * before each value, the comma, the key (which must be the manifest's column `col`) and
 * the colon; after the last, the closing brace and the newline. */
static int open_line(Parser *p)
{
    skip_ws(p);
    if (p->i >= p->n || p->s[p->i] != '{') return fail(p, "a line is not a JSON object");
    p->i++;
    return 0;
}

static int next_key(Parser *p, const LineShape *shape, int col, Buf *key)
{
    const char *s = p->s;
    size_t n = p->n;
    p->col = col;
    skip_ws(p);
    if (col > 0) {
        if (p->i >= n || s[p->i] != ',')
            return fail(p, p->i < n && s[p->i] == '}' ? "a column is missing" : "expected ','");
        p->i++;
        skip_ws(p);
    }
    if (p->i >= n || s[p->i] != '"')
        return fail(p, p->i < n && s[p->i] == '}' ? "a column is missing" : "expected a key");
    key->len = 0;
    if (parse_string(p, key, LEVEL_NONE) < 0) return -1;
    if (key->len != (size_t)shape->name_lens[col] ||
        (key->len && memcmp(key->p, shape->names[col], key->len) != 0))
        return fail(p, "the keys are not the manifest's columns in its order");
    skip_ws(p);
    if (p->i >= n || s[p->i] != ':') return fail(p, "expected ':'");
    p->i++;
    return 0;
}

static int close_line(Parser *p)
{
    p->col = -1;
    skip_ws(p);
    if (p->i >= p->n || p->s[p->i] != '}')
        return fail(p, "the line has more keys than the manifest's columns");
    p->i++;
    skip_ws(p);
    if (p->i >= p->n || p->s[p->i] != '\n') return fail(p, "more after the object on a line");
    p->i++;
    p->line++;
    return 0;
}

static int json_to_copy(const char *s, size_t n, const LineShape *shape, Buf *out,
                        Py_ssize_t *rows_out, Err *err)
{
    Parser p = {s, n, 0, 0, -1, err};
    Buf key = {NULL, 0, 0, NULL, 0};
    int rc = -1;
    while (p.i < n) {
        int col, written = 0;
        p.col = -1;
        if (open_line(&p) < 0) goto done;
        for (col = 0; col < shape->ncols; col++) {
            char action = shape->actions[col], c;
            if (next_key(&p, shape, col, &key) < 0) goto done;
            if (action == A_SKIP) {
                if (skip_value(&p, 0) < 0) goto done;
                continue;
            }
            if (written++) {
                RESERVE(out, 1);
                PUT(out, '\t');
            }
            skip_ws(&p);
            if (p.i >= n) {
                fail(&p, "the line ends early");
                goto done;
            }
            c = s[p.i];
            if (match_word(&p, "null", 4)) {
                RESERVE(out, 2);
                PUTS(out, "\\N", 2);
            } else if (c == '"') {
                if (parse_string(&p, out, LEVEL_COPY) < 0) goto done;
            } else if (action == A_ARRAY && c == '[') {
                /* braces, delimiters, NULL and numbers need no COPY escape; strings get
                 * array_in's and COPY's (LEVEL_ARRAY) */
                if (parse_array(&p, out, shape->delims[col], 1) < 0) goto done;
            } else if (action == A_SCALAR && match_word(&p, "true", 4)) {
                /* the token itself, as json_to_recordset gave it to the input function
                 * (boolin takes it; a text column stores "true") */
                RESERVE(out, 4);
                PUTS(out, "true", 4);
            } else if (action == A_SCALAR && match_word(&p, "false", 5)) {
                RESERVE(out, 5);
                PUTS(out, "false", 5);
            } else if (action == A_SCALAR && (c == '-' || is_digit(c))) {
                if (parse_number(&p, out) < 0) goto done;
            } else {
                fail(&p, action == A_TEXT ? "expected a string (the text encoding)"
                         : action == A_ARRAY ? "expected an array or a string"
                                             : "expected a number, string, boolean or null");
                goto done;
            }
        }
        if (close_line(&p) < 0) goto done;
        RESERVE(out, 1);
        PUT(out, '\n');
    }
    *rows_out = p.line;
    rc = 0;
done:
    free(key.p);
    return rc;
}

static PyObject *py_ndjson_to_copy(PyObject *self, PyObject *args)
{
    Py_buffer data, actions, delims;
    PyObject *names, *result = NULL;
    LineShape shape = {0, NULL, NULL, NULL, NULL};
    Buf buffer = {NULL, 0, 0, NULL, 0}, *out = &buffer;
    Err err = {{0}, 0, "", -1, -1};
    Py_ssize_t rows = 0, k;
    int rc;
    if (!PyArg_ParseTuple(args, "y*O!y*y*", &data, &PyTuple_Type, &names, &actions, &delims))
        return NULL;
    shape.ncols = PyTuple_GET_SIZE(names);
    shape.actions = actions.buf;
    shape.delims = delims.buf;
    if (actions.len != shape.ncols || delims.len != shape.ncols) {
        PyErr_SetString(PyExc_ValueError, "one action and one delimiter per column");
        goto fail;
    }
    shape.names = PyMem_Malloc(sizeof(char *) * (size_t)(shape.ncols + 1));
    shape.name_lens = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(shape.ncols + 1));
    if (!shape.names || !shape.name_lens) {
        PyErr_NoMemory();
        goto fail;
    }
    for (k = 0; k < shape.ncols; k++) {
        char *ns;
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(names, k), &ns, &shape.name_lens[k]) < 0)
            goto fail;
        shape.names[k] = ns;
    }
    if (data.len > 0 && ((const char *)data.buf)[data.len - 1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "the data does not end with a whole line");
        goto fail;
    }
    if (start_buffer(out, (size_t)data.len) < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = json_to_copy(data.buf, (size_t)data.len, &shape, out, &rows, &err);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        raise_err(&err);
        goto fail;
    }
    {
        PyObject *bytes = finish_buffer(out);
        if (bytes == NULL) goto fail;
        result = Py_BuildValue("(Nn)", bytes, rows);
    }
fail:
    release_buffer(out);
    PyMem_Free(shape.names);
    PyMem_Free(shape.name_lens);
    PyBuffer_Release(&data);
    PyBuffer_Release(&actions);
    PyBuffer_Release(&delims);
    return result;
}

/* ------------------------------------------ restore: JSON -> binary COPY tuples */

/* For tables whose every written column is one of these, COPY's binary format: the
 * server then neither splits lines nor parses numbers (measured 20% less server time
 * than text for pgbench_accounts, as DuckDB's load shows). Each value must be of the JSON
 * kind asyncsnap writes for its column: a number for an integer (a plain integer literal
 * in range: int4in would refuse "1e3" or "1.0" too), a string for a text type, true or
 * false for a boolean. Text input would also take a string "5" for an integer or 5 for a
 * text column, which no dump writes: a hand-made line like that is refused here. */
enum {
    B_SKIP = 'x',
    B_INT2 = '2',
    B_INT4 = '4',
    B_INT8 = '8',
    B_TEXT = 's', /* text, varchar, bpchar: the string's UTF-8 bytes (recv applies typmod) */
    B_BOOL = 'b',
};

static void put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static int put_binary_int(Parser *p, Buf *out, char kind)
{
    Err *err = p->err;
    size_t start = p->i, k;
    int negative = 0;
    uint64_t v = 0, limit;
    int bytes = kind == B_INT2 ? 2 : kind == B_INT4 ? 4 : 8;
    if (p->i < p->n && p->s[p->i] == '-') {
        negative = 1;
        p->i++;
    }
    limit = (bytes == 2 ? 32767u : bytes == 4 ? 2147483647u : 9223372036854775807ull) + negative;
    if (p->i >= p->n || !is_digit(p->s[p->i])) return fail(p, "expected an integer");
    if (p->s[p->i] == '0' && p->i + 1 < p->n && is_digit(p->s[p->i + 1]))
        return fail(p, "an invalid number");
    while (p->i < p->n && is_digit(p->s[p->i])) {
        if (v > (limit - (uint64_t)(p->s[p->i] - '0')) / 10)
            return fail(p, "an integer out of its column's range");
        v = v * 10 + (uint64_t)(p->s[p->i] - '0');
        p->i++;
    }
    if (p->i < p->n && (p->s[p->i] == '.' || p->s[p->i] == 'e' || p->s[p->i] == 'E'))
        return fail(p, "expected an integer");
    (void)start;
    if (negative) v = (uint64_t)0 - v;
    RESERVE(out, 4 + 8);
    put_be32(out->p + out->len, (uint32_t)bytes);
    out->len += 4;
    for (k = 0; k < (size_t)bytes; k++)
        out->p[out->len++] = (char)(v >> (8 * (bytes - 1 - k)));
    return 0;
}

static int json_to_binary(const char *s, size_t n, const LineShape *shape, int16_t fields,
                          Buf *out, Py_ssize_t *rows_out, Err *err)
{
    Parser p = {s, n, 0, 0, -1, err};
    Buf key = {NULL, 0, 0, NULL, 0};
    int rc = -1;
    while (p.i < n) {
        int col;
        p.col = -1;
        if (open_line(&p) < 0) goto done;
        RESERVE(out, 2);
        out->p[out->len++] = (char)((uint16_t)fields >> 8);
        out->p[out->len++] = (char)((uint16_t)fields & 0xff);
        for (col = 0; col < shape->ncols; col++) {
            char kind = shape->actions[col];
            if (next_key(&p, shape, col, &key) < 0) goto done;
            if (kind == B_SKIP) {
                if (skip_value(&p, 0) < 0) goto done;
                continue;
            }
            skip_ws(&p);
            if (match_word(&p, "null", 4)) {
                RESERVE(out, 4);
                put_be32(out->p + out->len, 0xFFFFFFFFu);
                out->len += 4;
            } else if (kind == B_TEXT) {
                size_t at;
                if (p.i >= n || s[p.i] != '"') {
                    fail(&p, "expected a string");
                    goto done;
                }
                RESERVE(out, 4);
                at = out->len;
                out->len += 4;
                if (parse_string(&p, out, LEVEL_NONE) < 0) goto done;
                if (out->len - at - 4 > 0x3FFFFFFFu) {
                    fail(&p, "a value over 1 GiB");
                    goto done;
                }
                put_be32(out->p + at, (uint32_t)(out->len - at - 4));
            } else if (kind == B_BOOL) {
                int v;
                if (match_word(&p, "true", 4))
                    v = 1;
                else if (match_word(&p, "false", 5))
                    v = 0;
                else {
                    fail(&p, "expected true or false");
                    goto done;
                }
                RESERVE(out, 5);
                put_be32(out->p + out->len, 1);
                out->len += 4;
                out->p[out->len++] = (char)v;
            } else if (kind == B_INT2 || kind == B_INT4 || kind == B_INT8) {
                if (put_binary_int(&p, out, kind) < 0) goto done;
            } else {
                fail(&p, "unknown column kind");
                goto done;
            }
        }
        if (close_line(&p) < 0) goto done;
    }
    *rows_out = p.line;
    rc = 0;
done:
    free(key.p);
    return rc;
}

static PyObject *py_ndjson_to_binary(PyObject *self, PyObject *args)
{
    Py_buffer data, kinds;
    PyObject *names, *result = NULL;
    LineShape shape = {0, NULL, NULL, NULL, NULL};
    Buf buffer = {NULL, 0, 0, NULL, 0}, *out = &buffer;
    Err err = {{0}, 0, "", -1, -1};
    Py_ssize_t rows = 0, k, fields = 0;
    int rc;
    if (!PyArg_ParseTuple(args, "y*O!y*", &data, &PyTuple_Type, &names, &kinds)) return NULL;
    shape.ncols = PyTuple_GET_SIZE(names);
    shape.actions = kinds.buf;
    if (kinds.len != shape.ncols) {
        PyErr_SetString(PyExc_ValueError, "one kind per column");
        goto fail;
    }
    shape.names = PyMem_Malloc(sizeof(char *) * (size_t)(shape.ncols + 1));
    shape.name_lens = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(shape.ncols + 1));
    if (!shape.names || !shape.name_lens) {
        PyErr_NoMemory();
        goto fail;
    }
    for (k = 0; k < shape.ncols; k++) {
        char *ns;
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(names, k), &ns, &shape.name_lens[k]) < 0)
            goto fail;
        shape.names[k] = ns;
        if (((const char *)kinds.buf)[k] != B_SKIP) fields++;
    }
    if (fields > 1600) {
        PyErr_SetString(PyExc_ValueError, "more columns than a table can have");
        goto fail;
    }
    if (data.len > 0 && ((const char *)data.buf)[data.len - 1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "the data does not end with a whole line");
        goto fail;
    }
    if (start_buffer(out, (size_t)data.len) < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = json_to_binary(data.buf, (size_t)data.len, &shape, (int16_t)fields, out, &rows, &err);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        raise_err(&err);
        goto fail;
    }
    {
        PyObject *bytes = finish_buffer(out);
        if (bytes == NULL) goto fail;
        result = Py_BuildValue("(Nn)", bytes, rows);
    }
fail:
    release_buffer(out);
    PyMem_Free(shape.names);
    PyMem_Free(shape.name_lens);
    PyBuffer_Release(&data);
    PyBuffer_Release(&kinds);
    return result;
}

/* ------------------------------------------------------------- fingerprints */

/* SHA-256 through OpenSSL's EVP interface: no deprecated call and no struct layout (the
 * build defines OPENSSL_API_COMPAT 30000 and OPENSSL_NO_DEPRECATED, so it stays so). The
 * digest is fetched once at import (EVP_MD_fetch, which also skips the per-call lookup);
 * each call of a module function makes one context and re-initialises it for every line,
 * so threads never share one. tests/test_fingerprint.py checks it against hashlib. */
static EVP_MD *sha256_md;

typedef struct {
    EVP_MD_CTX *ctx;
    int failed; /* an OpenSSL call failed: the caller raises */
} LineHasher;

static int hasher_open(LineHasher *h)
{
    h->failed = 0;
    h->ctx = EVP_MD_CTX_new();
    if (h->ctx == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    if (!EVP_DigestInit_ex2(h->ctx, sha256_md, NULL)) {
        EVP_MD_CTX_free(h->ctx);
        h->ctx = NULL;
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL's SHA-256 failed");
        return 0;
    }
    return 1;
}

static PyObject *hasher_close(LineHasher *h, PyObject *result)
{
    EVP_MD_CTX_free(h->ctx);
    h->ctx = NULL;
    if (h->failed && result != NULL) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL's SHA-256 failed");
        return NULL;
    }
    return result;
}

/* SHA-256's block function on the CPU's SHA instructions (x86 SHA extensions: Intel
 * since Ice Lake and Goldmont, AMD since Zen), where there are some: a line is one or two
 * blocks, and OpenSSL's EVP calls cost more than the hashing (83 against 139 ns a line of
 * 108 bytes, measured). Elsewhere EVP does it. Both are checked against hashlib
 * (tests/test_fingerprint.py runs each). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI_PATH 1

static const uint32_t SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

/* The state as the SHA instructions keep it: ABEF and CDGH. */
typedef struct {
    __m128i abef, cdgh;
} ShaState;

#define SHA_NI __attribute__((target("sha,sse4.1,ssse3")))
#define SHA_NI_INLINE __attribute__((target("sha,sse4.1,ssse3"), always_inline)) static inline

SHA_NI_INLINE ShaState sha_ni_initial(void)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    __m128i tmp = _mm_loadu_si128((const __m128i *)&h0[0]);
    __m128i efgh = _mm_loadu_si128((const __m128i *)&h0[4]);
    ShaState st;
    tmp = _mm_shuffle_epi32(tmp, 0xB1);           /* CDAB */
    efgh = _mm_shuffle_epi32(efgh, 0x1B);         /* EFGH */
    st.abef = _mm_alignr_epi8(tmp, efgh, 8);      /* ABEF */
    st.cdgh = _mm_blend_epi16(efgh, tmp, 0xF0);   /* CDGH */
    return st;
}

/* The first 16 bytes of the digest (a..d) as a big-endian integer. */
SHA_NI_INLINE unsigned __int128 sha_ni_first128(ShaState st)
{
    uint32_t state[8];
    __m128i tmp = _mm_shuffle_epi32(st.abef, 0x1B);  /* FEBA */
    __m128i dchg = _mm_shuffle_epi32(st.cdgh, 0xB1); /* DCHG */
    _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(tmp, dchg, 0xF0)); /* DCBA */
    _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(dchg, tmp, 8));    /* HGFE */
    return ((unsigned __int128)state[0] << 96) | ((unsigned __int128)state[1] << 64) |
           ((unsigned __int128)state[2] << 32) | (unsigned __int128)state[3];
}

/* One 64-byte block into the state: four rounds per step, the message schedule four
 * words at a time: W[t..t+3] = msg2(msg1(W[t-16..], W[t-12..]) + W[t-7..t-4], W[t-4..t-1]). */
SHA_NI_INLINE void sha_ni_block(ShaState *st, const unsigned char *data)
{
    const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abef = st->abef, cdgh = st->cdgh, msg, w[4];
    int g;
    /* unrolled: the four schedule registers then stay in registers */
#pragma GCC unroll 16
    for (g = 0; g < 16; g++) {
        if (g < 4) {
            w[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * g)), mask);
        } else {
            __m128i sum = _mm_add_epi32(_mm_sha256msg1_epu32(w[g & 3], w[(g + 1) & 3]),
                                        _mm_alignr_epi8(w[(g + 3) & 3], w[(g + 2) & 3], 4));
            w[g & 3] = _mm_sha256msg2_epu32(sum, w[(g + 3) & 3]);
        }
        msg = _mm_add_epi32(w[g & 3], _mm_loadu_si128((const __m128i *)&SHA256_K[4 * g]));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, msg);
        msg = _mm_shuffle_epi32(msg, 0x0E);
        abef = _mm_sha256rnds2_epu32(abef, cdgh, msg);
    }
    st->abef = _mm_add_epi32(abef, st->abef);
    st->cdgh = _mm_add_epi32(cdgh, st->cdgh);
}

/* A block of each of two messages at once, interleaved: each round depends on the one
 * before it, and the CPU can run a round of the other message meanwhile (a line of 108
 * bytes: 64 against 95 ns a line alone, measured on this project's 2-core machine). */
SHA_NI_INLINE void sha_ni_block_x2(ShaState *a, const unsigned char *da, ShaState *b,
                                   const unsigned char *db)
{
    const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i a_abef = a->abef, a_cdgh = a->cdgh, b_abef = b->abef, b_cdgh = b->cdgh;
    __m128i ma, mb, k, wa[4], wb[4];
    int g;
#pragma GCC unroll 16
    for (g = 0; g < 16; g++) {
        if (g < 4) {
            wa[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(da + 16 * g)), mask);
            wb[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(db + 16 * g)), mask);
        } else {
            __m128i sa = _mm_add_epi32(_mm_sha256msg1_epu32(wa[g & 3], wa[(g + 1) & 3]),
                                       _mm_alignr_epi8(wa[(g + 3) & 3], wa[(g + 2) & 3], 4));
            __m128i sb = _mm_add_epi32(_mm_sha256msg1_epu32(wb[g & 3], wb[(g + 1) & 3]),
                                       _mm_alignr_epi8(wb[(g + 3) & 3], wb[(g + 2) & 3], 4));
            wa[g & 3] = _mm_sha256msg2_epu32(sa, wa[(g + 3) & 3]);
            wb[g & 3] = _mm_sha256msg2_epu32(sb, wb[(g + 3) & 3]);
        }
        k = _mm_loadu_si128((const __m128i *)&SHA256_K[4 * g]);
        ma = _mm_add_epi32(wa[g & 3], k);
        mb = _mm_add_epi32(wb[g & 3], k);
        a_cdgh = _mm_sha256rnds2_epu32(a_cdgh, a_abef, ma);
        b_cdgh = _mm_sha256rnds2_epu32(b_cdgh, b_abef, mb);
        ma = _mm_shuffle_epi32(ma, 0x0E);
        mb = _mm_shuffle_epi32(mb, 0x0E);
        a_abef = _mm_sha256rnds2_epu32(a_abef, a_cdgh, ma);
        b_abef = _mm_sha256rnds2_epu32(b_abef, b_cdgh, mb);
    }
    a->abef = _mm_add_epi32(a_abef, a->abef);
    a->cdgh = _mm_add_epi32(a_cdgh, a->cdgh);
    b->abef = _mm_add_epi32(b_abef, b->abef);
    b->cdgh = _mm_add_epi32(b_cdgh, b->cdgh);
}

static int cpu_has_sha_ni(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1) || !(c & bit_SSSE3)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & (1u << 29)) != 0; /* CPUID.(EAX=7,ECX=0):EBX.SHA[bit 29] */
}

/* A message's 64-byte blocks: its whole blocks where they are, then its padded tail (the
 * 0x80 byte, zeros, the length in bits: one block or two). */
typedef struct {
    const unsigned char *p;
    size_t whole, blocks;
    unsigned char tail[128];
} ShaMessage;

static void sha_message(ShaMessage *m, const unsigned char *p, size_t n)
{
    size_t rest = n % 64, tail_blocks, i;
    uint64_t bits = (uint64_t)n * 8;
    m->p = p;
    m->whole = n / 64;
    memcpy(m->tail, p + m->whole * 64, rest);
    m->tail[rest] = 0x80;
    tail_blocks = rest + 9 <= 64 ? 1 : 2;
    memset(m->tail + rest + 1, 0, tail_blocks * 64 - rest - 1 - 8);
    for (i = 0; i < 8; i++) m->tail[tail_blocks * 64 - 1 - i] = (unsigned char)(bits >> (8 * i));
    m->blocks = m->whole + tail_blocks;
}

static inline const unsigned char *sha_message_block(const ShaMessage *m, size_t k)
{
    return k < m->whole ? m->p + 64 * k : m->tail + 64 * (k - m->whole);
}

/* The first 16 bytes of SHA-256(p[0..n)) as a big-endian integer. */
SHA_NI static unsigned __int128 line_digest128_ni(const unsigned char *p, size_t n)
{
    ShaMessage m;
    ShaState st = sha_ni_initial();
    size_t k;
    sha_message(&m, p, n);
    for (k = 0; k < m.blocks; k++) sha_ni_block(&st, sha_message_block(&m, k));
    return sha_ni_first128(st);
}

/* Both lines' digests (as line_digest128_ni's), their blocks interleaved while both have
 * some; the longer one's others alone. */
SHA_NI static void line_digest128_ni_x2(const unsigned char *p1, size_t n1,
                                        const unsigned char *p2, size_t n2,
                                        unsigned __int128 *v1, unsigned __int128 *v2)
{
    ShaMessage a, b;
    ShaState sa = sha_ni_initial(), sb = sha_ni_initial();
    size_t k, both;
    sha_message(&a, p1, n1);
    sha_message(&b, p2, n2);
    both = a.blocks < b.blocks ? a.blocks : b.blocks;
    for (k = 0; k < both; k++)
        sha_ni_block_x2(&sa, sha_message_block(&a, k), &sb, sha_message_block(&b, k));
    for (k = both; k < a.blocks; k++) sha_ni_block(&sa, sha_message_block(&a, k));
    for (k = both; k < b.blocks; k++) sha_ni_block(&sb, sha_message_block(&b, k));
    *v1 = sha_ni_first128(sa);
    *v2 = sha_ni_first128(sb);
}
#endif

/* Which path hashes: 1 the SHA instructions, 0 EVP. Chosen at import from the CPU;
 * ASYNCSNAP_SHA256=evp forces EVP (the tests run both). */
static int use_sha_ni;

/* The first 16 bytes of SHA-256(p[0..n)) as a big-endian integer. */
static unsigned __int128 line_digest128(LineHasher *h, const unsigned char *p, size_t n)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    unsigned __int128 v = 0;
    int i;
#ifdef HAVE_SHA_NI_PATH
    if (use_sha_ni) return line_digest128_ni(p, n);
#endif
    /* NULL: the context's digest again, set by hasher_open: no provider lookup per line */
    if (!EVP_DigestInit_ex2(h->ctx, NULL, NULL) || !EVP_DigestUpdate(h->ctx, p, n) ||
        !EVP_DigestFinal_ex(h->ctx, digest, &size) || size != 32) {
        h->failed = 1;
        return 0;
    }
    for (i = 0; i < 16; i++) v = (v << 8) | digest[i];
    return v;
}

/* Two lines' digests (line_digest128's), at once where the SHA instructions serve. */
static void line_digest128_two(LineHasher *h, const unsigned char *p1, size_t n1,
                               const unsigned char *p2, size_t n2, unsigned __int128 *v1,
                               unsigned __int128 *v2)
{
#ifdef HAVE_SHA_NI_PATH
    if (use_sha_ni) {
        line_digest128_ni_x2(p1, n1, p2, n2, v1, v2);
        return;
    }
#endif
    *v1 = line_digest128(h, p1, n1);
    *v2 = line_digest128(h, p2, n2);
}

/* Whole lines of data: how many, the sum modulo 2^128 of the first 16 bytes of each line's
 * SHA-256 (newline excluded) read as a big-endian integer, and where the last whole line
 * ends. What follows that offset (a line not yet ended) is the caller's to keep. */
static PyObject *py_line_fingerprint(PyObject *self, PyObject *arg)
{
    Py_buffer data;
    unsigned __int128 total = 0;
    Py_ssize_t rows = 0;
    size_t start = 0;
    unsigned char sum[16];
    int k;
    LineHasher hasher;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    if (!hasher_open(&hasher)) {
        PyBuffer_Release(&data);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    {
        const unsigned char *s = data.buf;
        size_t n = (size_t)data.len;
        while (start < n) {
            const unsigned char *nl = memchr(s + start, '\n', n - start), *nl2;
            size_t next;
            unsigned __int128 v1, v2;
            if (nl == NULL) break;
            next = (size_t)(nl - s) + 1;
            nl2 = next < n ? memchr(s + next, '\n', n - next) : NULL;
            if (nl2 == NULL) {
                total += line_digest128(&hasher, s + start, (size_t)(nl - (s + start)));
                rows++;
                start = next;
                continue;
            }
            line_digest128_two(&hasher, s + start, (size_t)(nl - (s + start)), s + next,
                               (size_t)(nl2 - (s + next)), &v1, &v2);
            total += v1 + v2; /* unsigned: wraps modulo 2^128 */
            rows += 2;
            start = (size_t)(nl2 - s) + 1;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    for (k = 15; k >= 0; k--) {
        sum[k] = (unsigned char)(total & 0xff);
        total >>= 8;
    }
    return hasher_close(
        &hasher, Py_BuildValue("(ny#n)", rows, (const char *)sum, (Py_ssize_t)16, (Py_ssize_t)start));
}

/* How many newlines p[0..n) holds: 8 bytes at a time. A byte of x is zero exactly where
 * the word has a newline; the sum below sets a byte's high bit exactly when it is not
 * zero (no carry crosses bytes), so z holds a 1 in the low bit of each newline's byte,
 * and the multiplication adds those eight bits into the top byte (no popcount
 * instruction needed). */
static size_t count_newlines(const unsigned char *p, size_t n)
{
    const uint64_t ones7 = 0x7F7F7F7F7F7F7F7FULL, nl = 0x0A0A0A0A0A0A0A0AULL;
    const uint64_t lows = 0x0101010101010101ULL;
    size_t i = 0, count = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word, x, z;
        memcpy(&word, p + i, 8);
        x = word ^ nl;
        z = (~(((x & ones7) + ones7) | x | ones7)) >> 7;
        count += (size_t)((z * lows) >> 56);
    }
    for (; i < n; i++) count += p[i] == '\n';
    return count;
}

/* Whether p[0..n) is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF). ASCII, the most of JSON, is checked 8 bytes at a time. */
static int valid_utf8(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (i + 8 <= n) {
            uint64_t word;
            memcpy(&word, p + i, 8);
            if ((word & 0x8080808080808080ULL) == 0) {
                i += 8;
                continue;
            }
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (p[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
            if (i + 2 >= n || p[i + 1] < lo || p[i + 1] > hi || (p[i + 2] & 0xC0) != 0x80)
                return 0;
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
            if (i + 3 >= n || p[i + 1] < lo || p[i + 1] > hi || (p[i + 2] & 0xC0) != 0x80 ||
                (p[i + 3] & 0xC0) != 0x80)
                return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* The k-th native uint64 of w, which may be any buffer: not necessarily 8-byte aligned (a
 * memoryview of a slice), where a uint64_t load would be undefined. */
static inline uint64_t uint64_at(const unsigned char *w, size_t k)
{
    uint64_t v;
    memcpy(&v, w + 8 * k, 8);
    return v;
}

/* Whether v is in the sorted array of n native uint64s at w. */
static int in_sorted(const unsigned char *w, size_t n, uint64_t v)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (uint64_at(w, mid) < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && uint64_at(w, lo) == v;
}

/* A set of wanted values, for asking of every line whether it is in it: a bitmap of their
 * top WANTED_BITS bits answers most lines no at once, and the sorted array settles the
 * rest (a binary search per line was most of a diff's second pass, perf). */
#define WANTED_BITS 20
typedef struct {
    const unsigned char *w;
    size_t n;
    uint64_t *bits; /* 2^WANTED_BITS bits, or NULL: every question goes to the array */
} Wanted;

static void wanted_open(Wanted *set, const unsigned char *w, size_t n)
{
    size_t i;
    set->w = w;
    set->n = n;
    set->bits = n ? calloc((size_t)1 << (WANTED_BITS - 6), sizeof(uint64_t)) : NULL;
    if (set->bits == NULL) return;
    for (i = 0; i < n; i++) {
        uint64_t top = uint64_at(w, i) >> (64 - WANTED_BITS);
        set->bits[top >> 6] |= (uint64_t)1 << (top & 63);
    }
}

static inline int wanted_has(const Wanted *set, uint64_t v)
{
    uint64_t top = v >> (64 - WANTED_BITS);
    if (set->bits != NULL && !(set->bits[top >> 6] & ((uint64_t)1 << (top & 63)))) return 0;
    return in_sorted(set->w, set->n, v);
}

/* line_columns(data, with_hashes, with_text[, wanted]): the lines of data (whole lines,
 * each ending in a newline) as the columns of an Arrow record batch for the analysis
 * engine:
 *   rows: the lines given back;
 *   with_hashes: hi, lo: per line, the first and second 8 bytes of its SHA-256 (newline
 *     excluded) as native-endian uint64 arrays: the line's identity, 128 bits;
 *     sum: the sum of those 128-bit values modulo 2^128, 16 big-endian bytes (the
 *     fingerprint of the lines given back, asyncsnap.fingerprint); otherwise None;
 *   with_text: offsets (int64, rows + 1) and the lines' bytes without their newlines (an
 *     Arrow large_string), each line checked to be UTF-8; otherwise None, None;
 *   longest: the length of the longest line given back;
 *   lines: how many lines data holds.
 * wanted (needs with_hashes): a sorted native uint64 array; only the lines whose first 8
 * bytes of SHA-256 are in it are given back (diff's second pass: a few lines of many).
 * firsts (needs wanted): one native uint64 per line of data, what the first pass found as
 * each line's first 8 bytes: a line whose entry is not in wanted is passed over unhashed;
 * one whose entry is in it is hashed and kept only if its own first 8 bytes are too. The
 * result is wanted's alone when firsts are the lines' own (else a subset of it).
 * Nothing of data is kept: the results are new bytes objects. */
static PyObject *py_line_columns(PyObject *self, PyObject *args)
{
    Py_buffer data, wanted = {0}, firsts = {0};
    int with_hashes = 0, with_text = 0, filtering;
    Py_ssize_t lines = 0, rows = 0, bad = -1, longest = 0, line = 0;
    size_t written = 0;
    unsigned __int128 total = 0;
    PyObject *hi = NULL, *lo = NULL, *sumbytes = NULL, *offsets = NULL, *text = NULL;
    PyObject *result = NULL;
    unsigned char sum[16];
    int k;
    LineHasher hasher = {NULL, 0};
    if (!PyArg_ParseTuple(args, "y*pp|y*y*", &data, &with_hashes, &with_text, &wanted, &firsts))
        return NULL;
    filtering = wanted.buf != NULL;
    if (filtering && (!with_hashes || wanted.len % 8 != 0)) {
        PyErr_SetString(PyExc_ValueError, "line_columns: wanted needs hashes and uint64s");
        goto fail;
    }
    {
        const unsigned char *s = data.buf;
        size_t n = (size_t)data.len;
        if (n > 0 && s[n - 1] != '\n') {
            PyErr_SetString(PyExc_ValueError, "line_columns: the data does not end with a newline");
            goto fail;
        }
        lines = (Py_ssize_t)count_newlines(s, n);
    }
    if (firsts.buf != NULL && (!filtering || firsts.len != lines * 8)) {
        PyErr_SetString(PyExc_ValueError, "line_columns: firsts needs wanted, a uint64 a line");
        goto fail;
    }
    /* sized for every line; cut to the lines kept at the end */
    if (with_hashes) {
        hi = PyBytes_FromStringAndSize(NULL, lines * 8);
        lo = PyBytes_FromStringAndSize(NULL, lines * 8);
        if (hi == NULL || lo == NULL) goto fail;
    }
    if (with_text) {
        offsets = PyBytes_FromStringAndSize(NULL, (lines + 1) * 8);
        text = PyBytes_FromStringAndSize(NULL, data.len - lines);
        if (offsets == NULL || text == NULL) goto fail;
    }
    if (with_hashes && !hasher_open(&hasher)) goto fail;
    Py_BEGIN_ALLOW_THREADS
    {
        const unsigned char *s = data.buf;
        const unsigned char *w = filtering ? (const unsigned char *)wanted.buf : NULL;
        const unsigned char *known = (const unsigned char *)firsts.buf; /* or NULL */
        Wanted set;
        size_t n = (size_t)data.len, start = 0, nw = (size_t)wanted.len / 8;
        uint64_t *his = with_hashes ? (uint64_t *)PyBytes_AS_STRING(hi) : NULL;
        uint64_t *los = with_hashes ? (uint64_t *)PyBytes_AS_STRING(lo) : NULL;
        int64_t *offs = with_text ? (int64_t *)PyBytes_AS_STRING(offsets) : NULL;
        char *out = with_text ? PyBytes_AS_STRING(text) : NULL;
        /* the next line's digest and end, when they were found with this one's */
        int have_next = 0;
        unsigned __int128 next_digest = 0;
        const unsigned char *next_nl = NULL;
        wanted_open(&set, w, filtering ? nw : 0);
        while (start < n) {
            const unsigned char *nl = have_next ? next_nl : memchr(s + start, '\n', n - start);
            size_t len = (size_t)(nl - (s + start));
            if (with_hashes) {
                unsigned __int128 v;
                size_t next = start + len + 1;
                const unsigned char *nl2;
                if (known != NULL && !wanted_has(&set, uint64_at(known, (size_t)line))) {
                    start = next; /* not a line the first pass found wanted: not hashed */
                    line++;
                    continue;
                }
                if (known != NULL) {
                    v = line_digest128(&hasher, s + start, len); /* few: one at a time */
                } else if (have_next) {
                    v = next_digest;
                    have_next = 0;
                } else if (next < n && (nl2 = memchr(s + next, '\n', n - next)) != NULL) {
                    line_digest128_two(&hasher, s + start, len, s + next,
                                       (size_t)(nl2 - (s + next)), &v, &next_digest);
                    next_nl = nl2;
                    have_next = 1;
                } else {
                    v = line_digest128(&hasher, s + start, len);
                }
                if (filtering && !wanted_has(&set, (uint64_t)(v >> 64))) {
                    start += len + 1;
                    line++;
                    continue;
                }
                his[rows] = (uint64_t)(v >> 64);
                los[rows] = (uint64_t)v;
                total += v; /* unsigned: wraps modulo 2^128 */
            }
            if ((Py_ssize_t)len > longest) longest = (Py_ssize_t)len;
            if (with_text) {
                if (bad < 0 && !valid_utf8(s + start, len)) bad = line; /* of all lines */
                offs[rows] = (int64_t)written;
                memcpy(out + written, s + start, len);
                written += len;
            }
            rows++;
            line++;
            start += len + 1;
        }
        if (with_text) offs[rows] = (int64_t)written;
        free(set.bits);
    }
    Py_END_ALLOW_THREADS
    if (bad >= 0) {
        Err err = {{0}, 0, "", -1, -1};
        err_set(&err, bad, -1, "not UTF-8");
        raise_err(&err);
        goto fail;
    }
    if (rows < lines) {
        if ((with_hashes && (_PyBytes_Resize(&hi, rows * 8) < 0 ||
                             _PyBytes_Resize(&lo, rows * 8) < 0)) ||
            (with_text && (_PyBytes_Resize(&offsets, (rows + 1) * 8) < 0 ||
                           _PyBytes_Resize(&text, (Py_ssize_t)written) < 0)))
            goto fail;
    }
    for (k = 15; k >= 0; k--) {
        sum[k] = (unsigned char)(total & 0xff);
        total >>= 8;
    }
    if (with_hashes) {
        sumbytes = PyBytes_FromStringAndSize((const char *)sum, 16);
        if (sumbytes == NULL) goto fail;
    } else {
        hi = Py_NewRef(Py_None);
        lo = Py_NewRef(Py_None);
        sumbytes = Py_NewRef(Py_None);
    }
    if (!with_text) {
        offsets = Py_NewRef(Py_None);
        text = Py_NewRef(Py_None);
    }
    result = Py_BuildValue("(nNNNNNnn)", rows, hi, lo, sumbytes, offsets, text, longest, lines);
    hi = lo = sumbytes = offsets = text = NULL; /* stolen by N, also when it fails */
fail:
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(sumbytes);
    Py_XDECREF(offsets);
    Py_XDECREF(text);
    PyBuffer_Release(&data);
    if (wanted.buf != NULL) PyBuffer_Release(&wanted);
    if (firsts.buf != NULL) PyBuffer_Release(&firsts);
    if (hasher.ctx != NULL) result = hasher_close(&hasher, result);
    return result;
}

/* ------------------------------------------------------------ line counts */

/* How many newlines: the row count of a block of NDJSON lines, which every reader takes
 * (restore, verify, compare). bytes.count(b"\n") goes a byte at a time: 2.9 GB/s,
 * measured on 512 KiB of pgbench's lines, and it was a fifth of a restore's client CPU
 * (perf, pgbench scale 50); sixteen bytes compared at a time on x86-64 (SSE2, which every
 * x86-64 has), a byte at a time elsewhere. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <emmintrin.h>
static Py_ssize_t newlines(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t count = 0, i = 0;
    const __m128i nl = _mm_set1_epi8('\n');
    while (i + 64 <= n) {
        /* four compares summed as bytes (each -1 or 0; at most -4): one popcount-free
         * reduction per 64 bytes */
        __m128i a = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i)), nl);
        __m128i b = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i + 16)), nl);
        __m128i c = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i + 32)), nl);
        __m128i d = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(p + i + 48)), nl);
        __m128i sum = _mm_sub_epi8(_mm_setzero_si128(),
                                   _mm_add_epi8(_mm_add_epi8(a, b), _mm_add_epi8(c, d)));
        __m128i wide = _mm_sad_epu8(sum, _mm_setzero_si128());
        count += _mm_cvtsi128_si64(wide) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(wide, wide));
        i += 64;
    }
    for (; i < n; i++) count += p[i] == '\n';
    return count;
}
#else
static Py_ssize_t newlines(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++) count += p[i] == '\n';
    return count;
}
#endif

static PyObject *py_count_lines(PyObject *self, PyObject *arg)
{
    Py_buffer data;
    Py_ssize_t count;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    if (data.len >= 65536) {
        Py_BEGIN_ALLOW_THREADS
        count = newlines((const unsigned char *)data.buf, data.len);
        Py_END_ALLOW_THREADS
    } else {
        count = newlines((const unsigned char *)data.buf, data.len);
    }
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(count);
}

/* equal_lines(a, a_start, b, b_start) -> n: the bytes of the run of whole lines that
   a[a_start:] and b[b_start:] both begin with (each starts at a line's start, so a common
   byte prefix that ends with a newline is a run of equal lines). diff's merge of two
   backups' files: equal lines are passed over here, without hashing or copying. */
static Py_ssize_t common_prefix(const unsigned char *a, const unsigned char *b, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    const Py_ssize_t step = 4096;
    while (i + step <= n && memcmp(a + i, b + i, step) == 0) i += step;
    while (i + 8 <= n) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y) break;
        i += 8;
    }
    while (i < n && a[i] == b[i]) i++;
    return i;
}

static PyObject *py_equal_lines(PyObject *self, PyObject *args)
{
    Py_buffer a, b;
    Py_ssize_t a_start, b_start, run = 0;
    if (!PyArg_ParseTuple(args, "y*ny*n:equal_lines", &a, &a_start, &b, &b_start)) return NULL;
    if (a_start < 0 || b_start < 0 || a_start > a.len || b_start > b.len) {
        PyBuffer_Release(&a);
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "equal_lines: a start outside its buffer");
        return NULL;
    }
    const unsigned char *pa = (const unsigned char *)a.buf + a_start;
    const unsigned char *pb = (const unsigned char *)b.buf + b_start;
    Py_ssize_t n = a.len - a_start < b.len - b_start ? a.len - a_start : b.len - b_start;
    Py_ssize_t same;
    if (n >= 65536) {
        Py_BEGIN_ALLOW_THREADS
        same = common_prefix(pa, pb, n);
        Py_END_ALLOW_THREADS
    } else {
        same = common_prefix(pa, pb, n);
    }
    for (Py_ssize_t i = same; i > 0; i--) {
        if (pa[i - 1] == '\n') {
            run = i;
            break;
        }
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return PyLong_FromSsize_t(run);
}

/* json_members(obj) -> [(name, value), ...]: the members of an object of column values as
 * a backup's lines and change lines write it (docs/format.md): `{`, then `"name":value`
 * members separated by `,`, then `}`, no whitespace; a value is a string, a bare scalar
 * (a run of bytes none of `",[]{}`: a number, null, true, false) or an array of those,
 * nested at most MEMBER_DEPTH deep (PostgreSQL's arrays have at most 6 dimensions). Each
 * name is given without its quotes and unescaped as written; each value as its bytes.
 * A chain's diff reads every change's key and row, and the lines they name, by this:
 * done in Python with a regular expression it was two thirds of that diff (cProfile).
 * ValueError when obj is not such an object. */
#define MEMBER_DEPTH 7

/* The end of the string that starts at p[at] (a `"`), or -1: a backslash escapes any
 * byte but a newline (no line holds one). */
static Py_ssize_t member_string_end(const unsigned char *p, Py_ssize_t n, Py_ssize_t at)
{
    Py_ssize_t i = at + 1;
    const unsigned char *quote = NULL; /* the next `"` from i on: found again only when an
                                          escape passed it, so a string is read once */
    while (i < n) {
        const unsigned char *backslash;
        if (quote == NULL || quote < p + i) {
            quote = memchr(p + i, '"', (size_t)(n - i));
            if (quote == NULL) return -1;
        }
        backslash = memchr(p + i, '\\', (size_t)(quote - (p + i)));
        if (backslash == NULL) return (quote - p) + 1;
        i = backslash - p;
        if (i + 1 >= n || p[i + 1] == '\n') return -1;
        i += 2;
    }
    return -1;
}

static inline int member_special(unsigned char c)
{
    return c == '"' || c == ',' || c == '[' || c == ']' || c == '{' || c == '}';
}

/* The end of the value that starts at p[at], or -1; depth: how many arrays it may nest. */
static Py_ssize_t member_value_end(const unsigned char *p, Py_ssize_t n, Py_ssize_t at, int depth)
{
    if (at >= n) return -1;
    if (p[at] == '"') return member_string_end(p, n, at);
    if (p[at] == '[') {
        Py_ssize_t i = at + 1;
        if (depth == 0) return -1;
        if (i < n && p[i] == ']') return i + 1;
        for (;;) {
            i = member_value_end(p, n, i, depth - 1);
            if (i < 0 || i >= n) return -1;
            if (p[i] == ']') return i + 1;
            if (p[i] != ',') return -1;
            i++;
        }
    }
    if (member_special(p[at])) return -1;
    while (at < n && !member_special(p[at])) at++;
    return at;
}

static PyObject *py_json_members(PyObject *self, PyObject *arg)
{
    Py_buffer obj;
    PyObject *members = NULL;
    if (PyObject_GetBuffer(arg, &obj, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = (const unsigned char *)obj.buf;
    Py_ssize_t n = obj.len, at = 0, end = n - 1;
    if (n < 2 || p[0] != '{' || p[end] != '}') goto refused;
    members = PyList_New(0);
    if (members == NULL) goto done;
    if (n == 2) goto done;
    while (at < end) {
        Py_ssize_t name, name_end, value;
        PyObject *member;
        if (p[at] != (at == 0 ? '{' : ',')) goto refused;
        name = at + 1;
        if (p[name] != '"') goto refused;
        name_end = member_string_end(p, n, name);
        if (name_end < 0 || name_end >= n || p[name_end] != ':') goto refused;
        /* in the object (its last byte is a `}`, which no value takes) */
        value = member_value_end(p, n, name_end + 1, MEMBER_DEPTH);
        if (value < 0) goto refused;
        member = Py_BuildValue("(y#y#)", (const char *)p + name + 1, name_end - name - 2,
                               (const char *)p + name_end + 1, value - name_end - 1);
        if (member == NULL || PyList_Append(members, member) < 0) {
            Py_XDECREF(member);
            Py_CLEAR(members);
            goto done;
        }
        Py_DECREF(member);
        at = value;
    }
    if (at == end) goto done;
refused:
    Py_CLEAR(members);
    PyErr_SetString(PyExc_ValueError, "json_members: not an object of column values");
done:
    PyBuffer_Release(&obj);
    return members;
}

/* A key's 64-bit hash, for asking of many lines whether their key is one of a few:
 * FNV-1a over its bytes, then splitmix64's finalizer, so that the top bits (which a
 * Wanted set's bitmap reads) depend on every byte. Not a digest: a hit is a candidate,
 * which the caller checks. */
#define KEY_HASH_START 0xcbf29ce484222325ULL

static inline uint64_t key_hash_add(uint64_t h, const unsigned char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static inline uint64_t key_hash_end(uint64_t h)
{
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

static PyObject *py_key_hash(PyObject *self, PyObject *arg)
{
    Py_buffer key;
    uint64_t h;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0) return NULL;
    h = key_hash_end(key_hash_add(KEY_HASH_START, key.buf, key.len));
    PyBuffer_Release(&key);
    return PyLong_FromUnsignedLongLong(h);
}

/* How pick_lines and line_keys read a line's key: the prefixes of the members to read
 * (`need` of them: up to the key's last column, or all with whole) and the key's columns
 * (indexes into them), with room for where each value starts and ends. */
typedef struct {
    Py_ssize_t nkey, need;
    const unsigned char **pre;
    Py_ssize_t *prelen, *key, *vstart, *vend;
} KeyReader;

static void key_reader_close(KeyReader *kr)
{
    PyMem_Free(kr->key);
    PyMem_Free(kr->pre);
    PyMem_Free(kr->prelen);
    PyMem_Free(kr->vstart);
    PyMem_Free(kr->vend);
}

/* 0, or -1 with an exception set (``name`` says whose arguments were wrong); close it
 * either way. */
static int key_reader_open(KeyReader *kr, PyObject *prefixes, PyObject *identity, int whole,
                           const char *name)
{
    Py_ssize_t nprefixes = PyTuple_GET_SIZE(prefixes), i;
    memset(kr, 0, sizeof(*kr));
    kr->nkey = PyTuple_GET_SIZE(identity);
    if (kr->nkey == 0) {
        PyErr_Format(PyExc_ValueError, "%s: a key of no column", name);
        return -1;
    }
    kr->key = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)kr->nkey);
    if (kr->key == NULL) goto nomemory;
    for (i = 0; i < kr->nkey; i++) {
        kr->key[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(identity, i));
        if (kr->key[i] == -1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
            PyErr_Clear(); /* an index past any tuple: said as any other one without */
        }
        if (kr->key[i] < 0 || kr->key[i] >= nprefixes) {
            PyErr_Format(PyExc_ValueError, "%s: a key column without its prefix", name);
            return -1;
        }
        if (kr->key[i] + 1 > kr->need) kr->need = kr->key[i] + 1;
    }
    if (whole) kr->need = nprefixes;
    kr->pre = PyMem_Malloc(sizeof(*kr->pre) * (size_t)kr->need);
    kr->prelen = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)kr->need);
    kr->vstart = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)kr->need);
    kr->vend = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)kr->need);
    if (kr->pre == NULL || kr->prelen == NULL || kr->vstart == NULL || kr->vend == NULL)
        goto nomemory;
    for (i = 0; i < kr->need; i++) {
        PyObject *item = PyTuple_GET_ITEM(prefixes, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s: prefixes are bytes", name);
            return -1;
        }
        kr->pre[i] = (const unsigned char *)PyBytes_AS_STRING(item);
        kr->prelen[i] = PyBytes_GET_SIZE(item);
    }
    return 0;
nomemory:
    PyErr_NoMemory();
    return -1;
}

/* Read a line's members up to the last one needed: where the last ends, or -1 when the
 * line's members do not begin with the prefixes. No Python call: runs without the GIL. */
static Py_ssize_t key_reader_read(KeyReader *kr, const unsigned char *p, Py_ssize_t len)
{
    Py_ssize_t at = 0, c;
    for (c = 0; c < kr->need; c++) {
        if (len - at < kr->prelen[c] || memcmp(p + at, kr->pre[c], (size_t)kr->prelen[c]) != 0)
            return -1;
        kr->vstart[c] = at + kr->prelen[c];
        at = member_value_end(p, len, kr->vstart[c], MEMBER_DEPTH);
        if (at < 0) return -1;
        kr->vend[c] = at;
    }
    return at;
}

/* pick_lines(data, prefixes, identity, wanted) -> the lines (each with its newline) whose
 * key is a candidate: data is whole lines of a backup's data file, each an object whose
 * members begin with prefixes[0], prefixes[1], ... (`{"a":`, `,"b":`, in the table's
 * order); a line's key is the values (as written) of the columns identity numbers, in
 * that order, joined by NUL bytes (no raw NUL occurs in JSON text), and it is a
 * candidate when key_hash of it is in wanted (sorted native uint64s). Each value is read
 * by json_members' grammar up to the last column the key needs; the rest of a line is
 * not read. LineError names the first line whose members do not begin so. A chain's diff
 * takes the lines its changes name from a full backup's file by this (through the
 * analysis engine it was most of that diff's time). With rest true, the result is
 * (picked, rest): rest the other lines, in order (a chain's restore loads those as they
 * are and replays its changes on the picked ones). */
static PyObject *py_pick_lines(PyObject *self, PyObject *args)
{
    Py_buffer data, wanted;
    PyObject *prefixes, *identity, *result = NULL;
    KeyReader kr;
    Py_ssize_t *picked = NULL, npicked = 0, bad_line = -1, total = 0, i;
    int nomem = 0, rest = 0;
    if (!PyArg_ParseTuple(args, "y*O!O!y*|p:pick_lines", &data, &PyTuple_Type, &prefixes,
                          &PyTuple_Type, &identity, &wanted, &rest))
        return NULL;
    memset(&kr, 0, sizeof(kr));
    if (wanted.len % 8 != 0 || (data.len > 0 &&
        ((const unsigned char *)data.buf)[data.len - 1] != '\n')) {
        PyErr_SetString(PyExc_ValueError, "pick_lines: whole lines and uint64s wanted");
        goto done;
    }
    if (key_reader_open(&kr, prefixes, identity, 0, "pick_lines") < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    {
        const unsigned char *s = data.buf;
        Py_ssize_t n = data.len, start = 0, line = 0, cap = 0;
        Wanted set;
        wanted_open(&set, wanted.buf, (size_t)wanted.len / 8);
        while (start < n) {
            const unsigned char *p = s + start;
            Py_ssize_t len = (const unsigned char *)memchr(p, '\n', (size_t)(n - start)) - p;
            Py_ssize_t c;
            uint64_t h = KEY_HASH_START;
            if (key_reader_read(&kr, p, len) < 0) {
                bad_line = line;
                break;
            }
            for (c = 0; c < kr.nkey; c++) {
                Py_ssize_t k = kr.key[c];
                if (c > 0) h = key_hash_add(h, (const unsigned char *)"", 1);
                h = key_hash_add(h, p + kr.vstart[k], kr.vend[k] - kr.vstart[k]);
            }
            if (wanted_has(&set, key_hash_end(h))) {
                if (npicked == cap) {
                    Py_ssize_t *grown;
                    cap = cap ? cap * 2 : 64;
                    grown = realloc(picked, sizeof(Py_ssize_t) * 2 * (size_t)cap);
                    if (grown == NULL) {
                        nomem = 1;
                        break;
                    }
                    picked = grown;
                }
                picked[2 * npicked] = start;
                picked[2 * npicked + 1] = len + 1;
                npicked++;
                total += len + 1;
            }
            start += len + 1;
            line++;
        }
        free(set.bits);
    }
    Py_END_ALLOW_THREADS
    if (nomem) goto nomemory;
    if (bad_line >= 0) {
        Err err = {{0}, 0, "", -1, -1};
        err_set(&err, bad_line, -1, "not a line of the table's columns");
        raise_err(&err);
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result != NULL) {
        char *out = PyBytes_AS_STRING(result);
        for (i = 0; i < npicked; i++) {
            memcpy(out, (const char *)data.buf + picked[2 * i], (size_t)picked[2 * i + 1]);
            out += picked[2 * i + 1];
        }
    }
    if (result != NULL && rest) {
        /* the gaps between the picked lines, in order */
        PyObject *others = PyBytes_FromStringAndSize(NULL, data.len - total), *pair;
        if (others == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        char *out = PyBytes_AS_STRING(others);
        Py_ssize_t from = 0;
        for (i = 0; i <= npicked; i++) {
            Py_ssize_t to = i < npicked ? picked[2 * i] : data.len;
            memcpy(out, (const char *)data.buf + from, (size_t)(to - from));
            out += to - from;
            if (i < npicked) from = picked[2 * i] + picked[2 * i + 1];
        }
        pair = PyTuple_Pack(2, result, others);
        Py_DECREF(others);
        Py_SETREF(result, pair);
    }
    goto done;
nomemory:
    PyErr_NoMemory();
done:
    free(picked);
    key_reader_close(&kr);
    PyBuffer_Release(&data);
    PyBuffer_Release(&wanted);
    return result;
}

/* A change line's object (chainlines.CHANGE_LINE's OBJECT): `{`, then anything but `"`,
 * `{` and `}`, or strings (`"`, then bytes but `"` and `\`, or `\` and any byte but a
 * newline, then `"`), up to a `}`. Where it ends (past its `}`), or -1. */
static Py_ssize_t change_object_end(const unsigned char *p, Py_ssize_t n, Py_ssize_t at)
{
    if (at >= n || p[at] != '{') return -1;
    at++;
    while (at < n) {
        unsigned char c = p[at];
        if (c == '}') return at + 1;
        if (c == '{') return -1;
        if (c == '"') {
            at++;
            for (;;) {
                if (at >= n) return -1;
                if (p[at] == '"') break;
                if (p[at] == '\\') {
                    if (at + 1 >= n || p[at + 1] == '\n') return -1;
                    at += 2;
                } else {
                    at++;
                }
            }
        }
        at++;
    }
    return -1;
}

static int change_literal(const unsigned char *p, Py_ssize_t n, Py_ssize_t *at, const char *lit)
{
    size_t len = strlen(lit);
    if (n - *at < (Py_ssize_t)len || memcmp(p + *at, lit, len) != 0) return 0;
    *at += (Py_ssize_t)len;
    return 1;
}

/* [0-9A-F]{1,8}: its value, or -1 */
static int64_t change_hex(const unsigned char *p, Py_ssize_t n, Py_ssize_t *at)
{
    int64_t v = 0;
    Py_ssize_t start = *at;
    while (*at < n && *at - start < 9) {
        unsigned char c = p[*at];
        if (c >= '0' && c <= '9') v = v * 16 + (c - '0');
        else if (c >= 'A' && c <= 'F') v = v * 16 + (c - 'A' + 10);
        else break;
        (*at)++;
    }
    if (*at == start || *at - start > 8) return -1;
    return v;
}

static int change_digits(const unsigned char *p, Py_ssize_t n, Py_ssize_t *at)
{
    Py_ssize_t start = *at;
    while (*at < n && p[*at] >= '0' && p[*at] <= '9') (*at)++;
    return *at > start;
}

static PyObject *change_ops[4];
static const char *change_op_names[4] = {"insert", "update", "delete", "truncate"};

/* change_lines(data) -> [(op, lsn, key, row, unchanged), ...]: each whole line of data
 * read as a change line (chainlines.CHANGE_LINE, its reference): op one of the four (the
 * same bytes object each time), lsn the commit's position as an int, key and row the
 * objects as written or None (null), unchanged the list as written. LineError names the
 * first line that is not one. A chain's restore and diff read their changes by it. */
static PyObject *py_change_lines(PyObject *self, PyObject *arg)
{
    Py_buffer data;
    PyObject *result = NULL;
    Py_ssize_t start = 0, line = 0;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *s = data.buf;
    Py_ssize_t total = data.len;
    if (total > 0 && s[total - 1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "change_lines: whole lines");
        goto done;
    }
    result = PyList_New(0);
    if (result == NULL) goto done;
    while (start < total) {
        const unsigned char *p = s + start;
        Py_ssize_t n = (const unsigned char *)memchr(p, '\n', (size_t)(total - start)) - p;
        Py_ssize_t at = 0, key = -1, key_end = -1, row = -1, row_end = -1;
        int op = -1, i;
        int64_t high, low;
        PyObject *item;
        if (!change_literal(p, n, &at, "{\"op\":\"")) goto refused;
        for (i = 0; i < 4; i++) {
            Py_ssize_t len = (Py_ssize_t)strlen(change_op_names[i]);
            if (n - at >= len + 1 && memcmp(p + at, change_op_names[i], (size_t)len) == 0 &&
                p[at + len] == '"') {
                op = i;
                at += len;
                break;
            }
        }
        if (op < 0 || !change_literal(p, n, &at, "\",\"lsn\":\"")) goto refused;
        if ((high = change_hex(p, n, &at)) < 0 || !change_literal(p, n, &at, "/")) goto refused;
        if ((low = change_hex(p, n, &at)) < 0) goto refused;
        if (!change_literal(p, n, &at, "\",\"xid\":") || !change_digits(p, n, &at)) goto refused;
        if (!change_literal(p, n, &at, ",\"n\":") || !change_digits(p, n, &at)) goto refused;
        if (!change_literal(p, n, &at, ",\"key\":")) goto refused;
        if (!change_literal(p, n, &at, "null")) {
            key = at;
            if ((at = change_object_end(p, n, at)) < 0) goto refused;
            key_end = at;
        }
        if (!change_literal(p, n, &at, ",\"row\":")) goto refused;
        if (!change_literal(p, n, &at, "null")) {
            row = at;
            if ((at = change_object_end(p, n, at)) < 0) goto refused;
            row_end = at;
        }
        if (!change_literal(p, n, &at, ",\"unchanged\":")) goto refused;
        /* \[[^\n]*\]\} to the line's end */
        if (n - at < 3 || p[at] != '[' || p[n - 2] != ']' || p[n - 1] != '}') goto refused;
        item = Py_BuildValue("(OKOOy#)", change_ops[op],
                             (unsigned long long)(((uint64_t)high << 32) | (uint64_t)low),
                             Py_None, Py_None, (const char *)p + at, n - 1 - at);
        if (item == NULL) goto failed;
        if (key >= 0) {
            PyObject *k = PyBytes_FromStringAndSize((const char *)p + key, key_end - key);
            if (k == NULL) {
                Py_DECREF(item);
                goto failed;
            }
            Py_SETREF(PyTuple_GET_ITEM(item, 2), k); /* a new tuple: ours to fill */
        }
        if (row >= 0) {
            PyObject *r = PyBytes_FromStringAndSize((const char *)p + row, row_end - row);
            if (r == NULL) {
                Py_DECREF(item);
                goto failed;
            }
            Py_SETREF(PyTuple_GET_ITEM(item, 3), r);
        }
        if (PyList_Append(result, item) < 0) {
            Py_DECREF(item);
            goto failed;
        }
        Py_DECREF(item);
        start += n + 1;
        line++;
        continue;
    refused: {
        Err err = {{0}, 0, "", -1, -1};
        err_set(&err, line, -1, "not a change line");
        raise_err(&err);
    }
    failed:
        Py_CLEAR(result);
        goto done;
    }
done:
    PyBuffer_Release(&data);
    return result;
}

/* line_keys(data, prefixes, identity, whole) -> [key, ...]: each line's key as pick_lines
 * reads it (the values of the columns identity numbers, as written, joined by NUL bytes),
 * every line of data (whole lines) an object whose members begin with prefixes[0],
 * prefixes[1], ...; with whole, each line must be exactly those members (its object ends
 * after the last prefix's value). LineError names the first line that is not so. A chain's
 * restore keys the lines it set aside, and the keys its changes name, by this. */
static PyObject *py_line_keys(PyObject *self, PyObject *args)
{
    Py_buffer data;
    PyObject *prefixes, *identity, *result = NULL;
    KeyReader kr;
    int whole = 0;
    if (!PyArg_ParseTuple(args, "y*O!O!p:line_keys", &data, &PyTuple_Type, &prefixes,
                          &PyTuple_Type, &identity, &whole))
        return NULL;
    memset(&kr, 0, sizeof(kr));
    if (data.len > 0 && ((const unsigned char *)data.buf)[data.len - 1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "line_keys: whole lines");
        goto done;
    }
    if (key_reader_open(&kr, prefixes, identity, whole, "line_keys") < 0) goto done;
    result = PyList_New(0);
    if (result == NULL) goto done;
    {
        const unsigned char *s = data.buf;
        Py_ssize_t n = data.len, start = 0, line = 0;
        while (start < n) {
            const unsigned char *p = s + start;
            Py_ssize_t len = (const unsigned char *)memchr(p, '\n', (size_t)(n - start)) - p;
            Py_ssize_t at = key_reader_read(&kr, p, len), c, size = 0;
            Py_ssize_t *key = kr.key, *vstart = kr.vstart, *vend = kr.vend;
            PyObject *k;
            char *out;
            if (at < 0 || (whole && (at != len - 1 || p[at] != '}'))) {
                Err err = {{0}, 0, "", -1, -1};
                err_set(&err, line, -1, "not a line of the key's columns");
                raise_err(&err);
                Py_CLEAR(result);
                goto done;
            }
            for (c = 0; c < kr.nkey; c++) size += vend[key[c]] - vstart[key[c]] + (c > 0);
            k = PyBytes_FromStringAndSize(NULL, size);
            if (k == NULL) {
                Py_CLEAR(result);
                goto done;
            }
            out = PyBytes_AS_STRING(k);
            for (c = 0; c < kr.nkey; c++) {
                if (c > 0) *out++ = '\0';
                memcpy(out, p + vstart[key[c]], (size_t)(vend[key[c]] - vstart[key[c]]));
                out += vend[key[c]] - vstart[key[c]];
            }
            if (PyList_Append(result, k) < 0) {
                Py_DECREF(k);
                Py_CLEAR(result);
                goto done;
            }
            Py_DECREF(k);
            start += len + 1;
            line++;
        }
    }
done:
    key_reader_close(&kr);
    PyBuffer_Release(&data);
    return result;
}

/* pgoutput_values(data, pos, unchanged) -> (values, end): a row's values as logical
 * replication's protocol (version 1) sends them ("TupleData") from data[pos:], and where
 * they end: a count (int16), then per column 'n' (NULL: None), 'u' (a TOASTed value the
 * change left alone: the object unchanged) or 't', an int32 length and the value's text
 * (bytes). 'b' (binary) is never asked for. ValueError, saying what, for anything else
 * or a message cut short. An increment reads every changed row by this (in Python, the
 * loop over the columns was the most of decoding). */
static uint32_t be32_at(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static PyObject *py_pgoutput_values(PyObject *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t pos, n, i;
    PyObject *unchanged, *values = NULL, *result = NULL;
    const unsigned char *p;
    int count;
    if (!PyArg_ParseTuple(args, "y*nO:pgoutput_values", &data, &pos, &unchanged)) return NULL;
    p = data.buf;
    n = data.len;
    if (pos < 0 || pos > n - 2) {
        PyErr_Format(PyExc_ValueError, "cut short at byte %zd", pos);
        goto done;
    }
    count = (int16_t)(((unsigned)p[pos] << 8) | p[pos + 1]);
    pos += 2;
    if (count < 0) {
        PyErr_Format(PyExc_ValueError, "a row of %d columns", count);
        goto done;
    }
    values = PyTuple_New(count);
    if (values == NULL) goto done;
    for (i = 0; i < count; i++) {
        PyObject *value;
        unsigned char kind;
        if (pos >= n) {
            PyErr_Format(PyExc_ValueError, "cut short at byte %zd", pos);
            goto done;
        }
        kind = p[pos++];
        if (kind == 't') {
            int32_t length;
            if (pos > n - 4) {
                PyErr_Format(PyExc_ValueError, "cut short at byte %zd", pos);
                goto done;
            }
            length = (int32_t)be32_at(p + pos);
            pos += 4;
            if (length < 0 || length > n - pos) {
                PyErr_Format(PyExc_ValueError, "a value of %d bytes past the message's end",
                             (int)length);
                goto done;
            }
            value = PyBytes_FromStringAndSize((const char *)p + pos, length);
            if (value == NULL) goto done;
            pos += length;
        } else if (kind == 'n') {
            value = Py_NewRef(Py_None);
        } else if (kind == 'u') {
            value = Py_NewRef(unchanged);
        } else {
            PyObject *letter = PyUnicode_FromOrdinal(kind);
            if (letter != NULL) {
                PyErr_Format(PyExc_ValueError, "a column value of kind %R", letter);
                Py_DECREF(letter);
            }
            goto done;
        }
        PyTuple_SET_ITEM(values, i, value);
    }
    result = Py_BuildValue("(On)", values, pos);
done:
    Py_XDECREF(values);
    PyBuffer_Release(&data);
    return result;
}

/* copy_text(rows) -> bytes: rows of values (bytes, or None for NULL) as lines of COPY's
 * text format, as COPY TO writes them: fields joined by tabs, NULL as \N, a backslash and
 * the controls \b \f \n \r \t \v escaped, each line ending in a newline. An increment
 * turns the rows a slot sent into the dump's input so (in Python, a join and two scans a
 * row were a fifth of its encoding). */
static Py_ssize_t copy_escaped(unsigned char c, char *out)
{
    char e;
    switch (c) {
    case '\\': e = '\\'; break;
    case '\b': e = 'b'; break;
    case '\f': e = 'f'; break;
    case '\n': e = 'n'; break;
    case '\r': e = 'r'; break;
    case '\t': e = 't'; break;
    case '\v': e = 'v'; break;
    default:
        if (out != NULL) out[0] = (char)c;
        return 1;
    }
    if (out != NULL) {
        out[0] = '\\';
        out[1] = e;
    }
    return 2;
}

/* Writes v[0..len) at *out (escaped, when escape), if it fits before end; 0 if not. */
static int copy_put(char **out, const char *end, const unsigned char *v, Py_ssize_t len,
                    int escape)
{
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_ssize_t need = escape ? copy_escaped(v[i], NULL) : 1;
        if (end - *out < need) return 0;
        if (escape)
            *out += copy_escaped(v[i], *out);
        else
            *(*out)++ = (char)v[i];
    }
    return 1;
}

static PyObject *py_copy_text(PyObject *self, PyObject *arg)
{
    PyObject *rows = PySequence_Fast(arg, "copy_text: a sequence of rows"), *result = NULL;
    PyObject **row_items;
    Py_ssize_t nrows, r, total = 0;
    char *out;
    if (rows == NULL) return NULL;
    nrows = PySequence_Fast_GET_SIZE(rows);
    row_items = PySequence_Fast_ITEMS(rows);
    /* first the size (and every value checked), then the bytes */
    for (r = 0; r < nrows; r++) {
        PyObject *row = row_items[r];
        Py_ssize_t width, k;
        if (!PyTuple_Check(row) && !PyList_Check(row)) {
            PyErr_SetString(PyExc_TypeError, "copy_text: a row is a tuple or a list");
            goto done;
        }
        width = PySequence_Fast_GET_SIZE(row);
        total += width > 0 ? width : 1; /* the tabs and the newline */
        for (k = 0; k < width; k++) {
            PyObject *value = PySequence_Fast_GET_ITEM(row, k);
            if (value == Py_None) {
                total += 2;
            } else if (PyBytes_Check(value)) {
                const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
                Py_ssize_t len = PyBytes_GET_SIZE(value), i;
                total += len;
                for (i = 0; i < len; i++) total += copy_escaped(v[i], NULL) - 1;
            } else {
                PyErr_SetString(PyExc_TypeError, "copy_text: a value is bytes or None");
                goto done;
            }
        }
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) goto done;
    out = PyBytes_AS_STRING(result);
    {
        /* Nothing between the passes runs Python code today (a bytes object is not one
         * the collector tracks, so its allocation starts no collection whose finalizers
         * could change a list of rows); should that ever change, every row's and value's
         * type is checked again and every write against the size: a change of the rows
         * is an error, never a read of a wrong object or a write past the end. */
        const char *end = out + total;
        int changed = PySequence_Fast_GET_SIZE(rows) != nrows;
        row_items = PySequence_Fast_ITEMS(rows); /* (a list's items may have moved) */
        for (r = 0; r < nrows && !changed; r++) {
            PyObject *row = row_items[r];
            Py_ssize_t width, k;
            if (!PyTuple_Check(row) && !PyList_Check(row)) {
                changed = 1;
                break;
            }
            width = PySequence_Fast_GET_SIZE(row);
            for (k = 0; k < width && !changed; k++) {
                PyObject *value = PySequence_Fast_GET_ITEM(row, k);
                if (k > 0) changed |= !copy_put(&out, end, (const unsigned char *)"\t", 1, 0);
                if (value == Py_None)
                    changed |= !copy_put(&out, end, (const unsigned char *)"\\N", 2, 0);
                else if (PyBytes_Check(value))
                    changed |= !copy_put(&out, end,
                                         (const unsigned char *)PyBytes_AS_STRING(value),
                                         PyBytes_GET_SIZE(value), 1);
                else
                    changed = 1;
            }
            if (!changed) changed |= !copy_put(&out, end, (const unsigned char *)"\n", 1, 0);
        }
        if (changed || out != end) {
            Py_CLEAR(result);
            PyErr_SetString(PyExc_RuntimeError, "copy_text: the rows changed while read");
        }
    }
done:
    Py_DECREF(rows);
    return result;
}

static PyMethodDef methods[] = {
    {"copy_to_ndjson", py_copy_to_ndjson, METH_VARARGS,
     "copy_to_ndjson(data, kinds, prefixes) -> (ndjson, rows, longest_line)\n\n"
     "Whole lines of COPY text output as NDJSON lines; kinds has one letter per column, "
     "prefixes the '{\"name\":' or ',\"name\":' written before each value."},
    {"binary_to_ndjson", py_binary_to_ndjson, METH_VARARGS,
     "binary_to_ndjson(data, kinds, prefixes) -> (ndjson, rows, longest_line)\n\n"
     "Whole tuples of COPY binary output (no header; the trailer may end them) as NDJSON "
     "lines, the same as copy_to_ndjson writes from the text format; kinds has one letter "
     "per column: 2/4/8 integers, N numeric, e/d float4/8, b boolean, t/z timestamp(tz), "
     "D date, T time, Z timetz, I interval, u uuid, x bytea, s string, j jsonb, "
     "r server-rendered JSON."},
    {"binary_whole", py_binary_whole, METH_O,
     "binary_whole(data) -> int: where the whole tuples of COPY binary data end."},
    {"ndjson_to_copy", py_ndjson_to_copy, METH_VARARGS,
     "ndjson_to_copy(data, names, actions, delimiters) -> (copy_text, rows)\n\n"
     "Whole NDJSON lines as COPY text input; names are the keys expected in order, "
     "actions one letter per column (x skip, j json, t text, a array)."},
    {"ndjson_to_binary", py_ndjson_to_binary, METH_VARARGS,
     "ndjson_to_binary(data, names, kinds) -> (tuples, rows)\n\n"
     "Whole NDJSON lines as COPY binary tuples (no header or trailer); kinds one letter per "
     "column: x skip, 2/4/8 integers, s text types, b boolean."},
    {"line_fingerprint", py_line_fingerprint, METH_O,
     "line_fingerprint(data) -> (rows, sum, end)\n\n"
     "The whole lines of data: how many, the sum modulo 2**128 of the first 16 bytes of "
     "each line's SHA-256 (without its newline) as 16 big-endian bytes, and the offset "
     "after the last newline."},
    {"line_columns", py_line_columns, METH_VARARGS,
     "line_columns(data, with_hashes, with_text[, wanted]) -> "
     "(rows, hi, lo, sum, offsets, text, longest, lines)\n\n"
     "Whole lines as Arrow columns: with_hashes, each line's 128-bit SHA-256 prefix as two "
     "native uint64 arrays and their sum modulo 2**128 (16 big-endian bytes); with_text, int64 "
     "offsets and the lines without newlines (checked UTF-8). None for what was not asked; "
     "longest: the longest line's length; lines: the lines in data. wanted: a sorted uint64 "
     "array: only lines whose first hash half is in it are given back."},
    {"equal_lines", py_equal_lines, METH_VARARGS,
     "equal_lines(a, a_start, b, b_start) -> int: the bytes of whole lines that a[a_start:] "
     "and b[b_start:] both begin with."},
    {"count_lines", py_count_lines, METH_O,
     "count_lines(data) -> int: how many newlines data holds (bytes.count(b'\\n'), faster)."},
    {"json_members", py_json_members, METH_O,
     "json_members(obj) -> [(name, value), ...]: an object of column values' members (names "
     "without quotes, as written; values as their bytes); ValueError when it is not one."},
    {"key_hash", py_key_hash, METH_O,
     "key_hash(key) -> int: a key's 64-bit hash (FNV-1a, then splitmix64's finalizer), as "
     "pick_lines asks of it."},
    {"pick_lines", py_pick_lines, METH_VARARGS,
     "pick_lines(data, prefixes, identity, wanted) -> bytes: the whole lines whose key (the "
     "values of the columns identity numbers, joined by NUL) has its key_hash in wanted, a "
     "sorted native uint64 array; LineError for a line whose members do not begin with the "
     "prefixes. pick_lines(..., True) -> (picked, rest): rest the other lines, in order."},
    {"change_lines", py_change_lines, METH_O,
     "change_lines(data) -> [(op, lsn, key, row, unchanged)]: each whole line read as a change "
     "line (chainlines.CHANGE_LINE); key and row None for null. LineError for the first line "
     "that is not one."},
    {"line_keys", py_line_keys, METH_VARARGS,
     "line_keys(data, prefixes, identity, whole) -> [bytes]: each whole line's key as "
     "pick_lines reads it (the identity's values joined by NUL); with whole, each line must "
     "be exactly the prefixes' members. LineError for the first line that is not so."},
    {"pgoutput_values", py_pgoutput_values, METH_VARARGS,
     "pgoutput_values(data, pos, unchanged) -> (values, end): a row's values (pgoutput's "
     "TupleData) from data[pos:]: bytes, None for NULL, unchanged for 'u'; ValueError for "
     "a message cut short or a kind other than t, n, u."},
    {"copy_text", py_copy_text, METH_O,
     "copy_text(rows) -> bytes: rows of bytes or None as lines of COPY's text format (tabs, "
     "\\N, a backslash and \\b \\f \\n \\r \\t \\v escaped, a newline each)."},
    {"json_string", py_json_string, METH_O,
     "json_string(utf8) -> bytes: the bytes as a JSON string, escaped as escape_json does."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "asyncsnap._rows",
    "The per-row work of the fast data path (COPY text <-> NDJSON), in native code.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__rows(void)
{
    PyObject *m;
    init_tables();
    init_pow10();
    if (sha256_md == NULL) sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#ifdef HAVE_SHA_NI_PATH
    {
        const char *forced = getenv("ASYNCSNAP_SHA256");
        use_sha_ni = cpu_has_sha_ni() && !(forced != NULL && strcmp(forced, "evp") == 0);
    }
#endif
    if (sha256_md == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256 (EVP_MD_fetch failed)");
        return NULL;
    }
    m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    for (int i = 0; i < 4; i++) {
        if (change_ops[i] == NULL) change_ops[i] = PyBytes_FromString(change_op_names[i]);
        if (change_ops[i] == NULL) {
            Py_DECREF(m);
            return NULL;
        }
    }
    LineError = PyErr_NewExceptionWithDoc(
        "asyncsnap._rows.LineError",
        "A line not as expected: .what, .line (0-based within the data given) and "
        ".column (0-based, or -1).",
        PyExc_ValueError, NULL);
    if (LineError == NULL || PyModule_AddObjectRef(m, "LineError", LineError) < 0 ||
        PyModule_AddStringConstant(m, "SHA256_PATH", use_sha_ni ? "sha-ni" : "evp") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
