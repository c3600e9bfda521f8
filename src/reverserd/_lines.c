/*
 * Every line of a read of ASCII reversed in one pass, in C.
 *
 * reversal.py's block path flips a whole read, splits it into lines, puts
 * them back in order and joins them: four passes and an object per line,
 * about three quarters of what a pipelined ASCII line costs the server.
 * Here each line is copied reversed straight to its own place in the reply,
 * its line end after it, and nothing is made per line.  Whatever this pass
 * cannot answer exactly as reversal.reverse() would line by line (text that
 * is not ASCII, a line over the limit, a command line) it declines, and the
 * Python paths answer as before.
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

static PyObject *
reverse_ascii_lines(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *block, *commands;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "SnO!:reverse_ascii_lines", &block, &limit, &PyDict_Type,
                          &commands)) {
        return NULL;
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
        if (reverse_ascii(in + start, out + start, length) < 0) {
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
    {"reverse_ascii_lines", reverse_ascii_lines, METH_VARARGS,
     "reverse_ascii_lines(block, limit, commands): (replies, lines), or None where the "
     "line-by-line path must answer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "reverserd._lines",
    "Every line of a read of ASCII reversed in one pass, in C.", -1, methods, NULL, NULL, NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__lines(void)
{
    return PyModule_Create(&module_definition);
}
