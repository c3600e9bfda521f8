/*
 * Every line of a read reversed in one pass, in C, where each character is
 * a cluster of its own: ASCII, and UTF-8 text with no byte that can start a
 * joining character (graphemes.may_join's test, from the same lead bytes).
 *
 * reversal.py's block path flips a whole read, splits it into lines, puts
 * them back in order and joins them: four passes and an object per line,
 * about three quarters of what a pipelined ASCII line costs the server, and
 * text is decoded and encoded on top.  Here each line is copied reversed
 * straight to its own place in the reply, its line end after it, with
 * nothing made per line: ASCII eight bytes at a time, UTF-8 a character at
 * a time, checked as strictly as Python's decoder checks it.  Whatever this
 * pass cannot answer exactly as reversal.reverse() would line by line
 * (invalid UTF-8, characters that may join, a line over the limit, a
 * command line) it declines, and the Python paths answer as before.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The shortest and longest command name: only lines of such a length can be one. */
static int
name_lengths(PyObject *commands, Py_ssize_t *shortest, Py_ssize_t *longest)
{
    PyObject *name, *method;
    Py_ssize_t position = 0;
    *shortest = PY_SSIZE_T_MAX;
    *longest = -1;
    while (PyDict_Next(commands, &position, &name, &method)) {
        if (!PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "command names must be bytes");
            return -1;
        }
        Py_ssize_t size = PyBytes_GET_SIZE(name);
        *shortest = size < *shortest ? size : *shortest;
        *longest = size > *longest ? size : *longest;
    }
    return 0;
}

/* Copy line[:length] reversed to out; -1 (out spoilt) when a byte of it is not ASCII.
 * Eight bytes at a time, byte-swapped, then the rest one by one. */
static inline int
reverse_ascii(const char *line, unsigned char *out, Py_ssize_t length)
{
    uint64_t bits = 0;
    Py_ssize_t offset = 0;
    for (; offset + 8 <= length; offset += 8) {
        uint64_t word;
        memcpy(&word, line + length - offset - 8, 8);
        bits |= word;
        word = __builtin_bswap64(word);
        memcpy(out + offset, &word, 8);
    }
    for (; offset < length; offset++) {
        unsigned char byte = (unsigned char)line[length - 1 - offset];
        bits |= byte;
        out[offset] = byte;
    }
    return bits & UINT64_C(0x8080808080808080) ? -1 : 0;
}

/* Copy the well-formed UTF-8 line[:length] to out, characters in reverse order;
 * -1 (out spoilt) when it is not well-formed or a byte of it is in joiner_leads.
 * Well-formed as in the Unicode Standard's table 3-7, as Python decodes it: no
 * overlong form, no surrogate, nothing over U+10FFFF. */
static inline int
reverse_code_points(const char *line, unsigned char *out, Py_ssize_t length,
                    const unsigned char *joiner_leads)
{
    const unsigned char *bytes = (const unsigned char *)line;
    Py_ssize_t offset = 0;
    while (offset < length) {
        unsigned char lead = bytes[offset];
        Py_ssize_t size;
        unsigned char low = 0x80, high = 0xBF;  /* the second byte's range */
        if (lead < 0x80) {
            out[length - offset - 1] = lead;
            offset++;
            continue;
        }
        if (joiner_leads[lead]) {
            return -1;
        }
        if (lead >= 0xC2 && lead <= 0xDF) {
            size = 2;
        } else if (lead >= 0xE0 && lead <= 0xEF) {
            size = 3;
            low = lead == 0xE0 ? 0xA0 : 0x80;
            high = lead == 0xED ? 0x9F : 0xBF;
        } else if (lead >= 0xF0 && lead <= 0xF4) {
            size = 4;
            low = lead == 0xF0 ? 0x90 : 0x80;
            high = lead == 0xF4 ? 0x8F : 0xBF;
        } else {
            return -1;
        }
        if (offset + size > length || bytes[offset + 1] < low || bytes[offset + 1] > high) {
            return -1;
        }
        for (Py_ssize_t next = 2; next < size; next++) {
            if ((bytes[offset + next] & 0xC0) != 0x80) {
                return -1;
            }
        }
        memcpy(out + length - offset - size, bytes + offset, (size_t)size);
        offset += size;
    }
    return 0;
}

/* 1 when line[:length] names a command, 0 when not, -1 on error. */
static int
is_command(PyObject *commands, const char *line, Py_ssize_t length)
{
    PyObject *name = PyBytes_FromStringAndSize(line, length);
    if (name == NULL) {
        return -1;
    }
    int found = PyDict_Contains(commands, name);
    Py_DECREF(name);
    return found;
}

/* Called once a read: fast-call arguments, checked by hand (PyArg_ParseTuple
 * would cost about a third as much as answering a short read). */
static PyObject *
reverse_lines(PyObject *module, PyObject *const *args, Py_ssize_t count)
{
    (void)module;
    if (count != 4 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1])
            || !PyDict_Check(args[2]) || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "reverse_lines(block, limit, commands, joiner_leads) takes bytes, an int, "
                        "a dict and bytes");
        return NULL;
    }
    PyObject *block = args[0], *commands = args[2];
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const char *leads = PyBytes_AS_STRING(args[3]);
    Py_ssize_t leads_size = PyBytes_GET_SIZE(args[3]);
    unsigned char joiner_leads[256] = {0};
    for (Py_ssize_t index = 0; index < leads_size; index++) {
        joiner_leads[(unsigned char)leads[index]] = 1;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(block);
    const char *in = PyBytes_AS_STRING(block);
    if (size == 0 || in[size - 1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "the block must end with an LF");
        return NULL;
    }
    Py_ssize_t shortest, longest;
    if (name_lengths(commands, &shortest, &longest) < 0) {
        return NULL;
    }
    PyObject *replies = PyBytes_FromStringAndSize(NULL, size);
    if (replies == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(replies);
    Py_ssize_t start = 0, lines = 0;
    while (start < size) {
        const char *found = memchr(in + start, '\n', (size_t)(size - start));
        Py_ssize_t lf = found - in;  /* found: the block ends with an LF */
        Py_ssize_t end = lf > start && in[lf - 1] == '\r' ? lf - 1 : lf;
        Py_ssize_t length = end - start;
        if (length > limit) {
            goto decline;
        }
        if (reverse_ascii(in + start, out + start, length) < 0
                && reverse_code_points(in + start, out + start, length, joiner_leads) < 0) {
            goto decline;
        }
        if (length >= shortest && length <= longest) {
            int command = is_command(commands, in + start, length);
            if (command < 0) {
                Py_DECREF(replies);
                return NULL;
            }
            if (command) {
                goto decline;
            }
        }
        memcpy(out + end, in + end, (size_t)(lf + 1 - end));
        lines++;
        start = lf + 1;
    }
    return Py_BuildValue("(Nn)", replies, lines);

decline:
    Py_DECREF(replies);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"reverse_lines", (PyCFunction)(void (*)(void))reverse_lines, METH_FASTCALL,
     "reverse_lines(block, limit, commands, joiner_leads): (replies, lines), or None where "
     "the other paths must answer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "reverserd._lines",
    "Every line of a read reversed in one pass, in C, where each character stands alone.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__lines(void)
{
    return PyModule_Create(&module_definition);
}
