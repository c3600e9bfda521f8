/*
 * Text reversed by extended grapheme cluster (Unicode Standard Annex #29), in C.
 *
 * The same rules as graphemes.py's patterns, walked once over the text a
 * code point at a time, with each cluster copied whole to its place from
 * the end of a new string.  The properties come from Python at load(), as
 * a two-stage table built from _unicode_tables, so this file holds rules,
 * not data, and can never disagree with the patterns about a property.
 *
 * A property byte: bits 0-3 the Grapheme_Cluster_Break value (numbered as
 * below), bit 4 Extended_Pictographic, bits 5-6 Indic_Conjunct_Break.
 * CR and LF are Control here: a CR before an LF stays a cluster of its own,
 * as reverse_text promises, so a block of lines still splits at every LF.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum {
    OTHER = 0, CONTROL = 3, EXTEND = 4, ZWJ = 5, REGIONAL_INDICATOR = 6, PREPEND = 7,
    SPACING_MARK = 8, L = 9, V = 10, T = 11, LV = 12, LVT = 13
};
#define BREAK_BITS 0x0F
#define PICTOGRAPHIC 0x10
#define CONJUNCT_SHIFT 5
enum { CONJUNCT_NONE = 0, CONJUNCT_CONSONANT = 1, CONJUNCT_EXTEND = 2, CONJUNCT_LINKER = 3 };

#define CODE_POINTS 0x110000
#define BLOCK_SHIFT 8
#define BLOCK_SIZE (1 << BLOCK_SHIFT)
#define BLOCKS (CODE_POINTS >> BLOCK_SHIFT)

/* The tables, kept alive by the references below once load() checked them. */
static PyObject *block_index_object = NULL;
static PyObject *blocks_object = NULL;
static const unsigned short *block_index = NULL;
static const unsigned char *blocks = NULL;

static inline unsigned char
property_of(Py_UCS4 code_point)
{
    if (code_point >= CODE_POINTS) {
        return OTHER;
    }
    return blocks[(size_t)block_index[code_point >> BLOCK_SHIFT] * BLOCK_SIZE
                  + (code_point & (BLOCK_SIZE - 1))];
}

static PyObject *
load(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *index_object, *blocks_bytes;
    if (!PyArg_ParseTuple(args, "SS:load", &index_object, &blocks_bytes)) {
        return NULL;
    }
    if (PyBytes_GET_SIZE(index_object) != (Py_ssize_t)(BLOCKS * sizeof(unsigned short))) {
        PyErr_SetString(PyExc_ValueError, "the block index must have one entry per block");
        return NULL;
    }
    Py_ssize_t block_count = PyBytes_GET_SIZE(blocks_bytes) / BLOCK_SIZE;
    if (block_count == 0 || PyBytes_GET_SIZE(blocks_bytes) % BLOCK_SIZE != 0) {
        PyErr_SetString(PyExc_ValueError, "the blocks must be whole blocks");
        return NULL;
    }
    const unsigned short *index = (const unsigned short *)PyBytes_AS_STRING(index_object);
    for (Py_ssize_t block = 0; block < BLOCKS; block++) {
        if (index[block] >= block_count) {
            PyErr_SetString(PyExc_ValueError, "the block index names a missing block");
            return NULL;
        }
    }
    Py_INCREF(index_object);
    Py_INCREF(blocks_bytes);
    Py_XSETREF(block_index_object, index_object);
    Py_XSETREF(blocks_object, blocks_bytes);
    block_index = index;
    blocks = (const unsigned char *)PyBytes_AS_STRING(blocks_bytes);
    Py_RETURN_NONE;
}

/* What the rules that look further back than one character need to know. */
typedef struct {
    unsigned char previous;   /* the last character's break value */
    unsigned char emoji;      /* GB11: 1 after a pictograph (and Extend), 2 after its ZWJ */
    unsigned char conjunct;   /* GB9c: 1 after a consonant (and extenders), 2 after a linker */
    Py_ssize_t regional_run;  /* GB12, GB13: regional indicators just before */
} Segmenter;

static inline void
segmenter_take(Segmenter *state, unsigned char property)
{
    unsigned char kind = property & BREAK_BITS;
    int conjunct = property >> CONJUNCT_SHIFT;
    if (property & PICTOGRAPHIC) {
        state->emoji = 1;
    } else if (state->emoji == 1 && kind == EXTEND) {
        state->emoji = 1;
    } else if (state->emoji == 1 && kind == ZWJ) {
        state->emoji = 2;
    } else {
        state->emoji = 0;
    }
    if (conjunct == CONJUNCT_CONSONANT) {
        state->conjunct = 1;
    } else if (state->conjunct && conjunct == CONJUNCT_LINKER) {
        state->conjunct = 2;
    } else if (!(state->conjunct && conjunct == CONJUNCT_EXTEND)) {
        state->conjunct = 0;
    }
    state->regional_run = kind == REGIONAL_INDICATOR ? state->regional_run + 1 : 0;
    state->previous = kind;
}

static inline int
is_boundary(const Segmenter *state, unsigned char property)
{
    unsigned char previous = state->previous, current = property & BREAK_BITS;
    if (previous == CONTROL || current == CONTROL) {                        /* GB4, GB5 */
        return 1;
    }
    if (previous == L && (current == L || current == V || current == LV || current == LVT)) {
        return 0;                                                           /* GB6 */
    }
    if ((previous == LV || previous == V) && (current == V || current == T)) {
        return 0;                                                           /* GB7 */
    }
    if ((previous == LVT || previous == T) && current == T) {               /* GB8 */
        return 0;
    }
    if (current == EXTEND || current == ZWJ || current == SPACING_MARK) {   /* GB9, GB9a */
        return 0;
    }
    if (previous == PREPEND) {                                              /* GB9b */
        return 0;
    }
    if ((property >> CONJUNCT_SHIFT) == CONJUNCT_CONSONANT && state->conjunct == 2) {
        return 0;                                                           /* GB9c */
    }
    if (previous == ZWJ && (property & PICTOGRAPHIC) && state->emoji == 2) {  /* GB11 */
        return 0;
    }
    if (previous == REGIONAL_INDICATOR && current == REGIONAL_INDICATOR) {  /* GB12, GB13 */
        return state->regional_run % 2 == 0;
    }
    return 1;                                                               /* GB999 */
}

/* Copy text[start:end] to the place it takes in the reversed text. */
static inline void
place(int kind, const char *text, char *reversed, Py_ssize_t length, Py_ssize_t start,
      Py_ssize_t end)
{
    memcpy(reversed + (length - end) * kind, text + start * kind, (size_t)(end - start) * kind);
}

static PyObject *
reverse(PyObject *module, PyObject *text)
{
    (void)module;
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "reverse() takes a str, not %.100s",
                     Py_TYPE(text)->tp_name);
        return NULL;
    }
    if (PyUnicode_READY(text) == -1) {
        return NULL;
    }
    if (blocks == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "load() the property tables first");
        return NULL;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    PyObject *result = PyUnicode_New(length, PyUnicode_MAX_CHAR_VALUE(text));
    if (result == NULL || length == 0) {
        return result;
    }
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    char *reversed = PyUnicode_DATA(result);
    Segmenter state = {0, 0, 0, 0};
    segmenter_take(&state, property_of(PyUnicode_READ(kind, data, 0)));
    Py_ssize_t start = 0;
    for (Py_ssize_t index = 1; index < length; index++) {
        Py_UCS4 code_point = PyUnicode_READ(kind, data, index);
        unsigned char property = property_of(code_point);
        if (is_boundary(&state, property)) {
            if (index - start == 1) {
                PyUnicode_WRITE(kind, reversed, length - index,
                                PyUnicode_READ(kind, data, start));
            } else {
                place(kind, data, reversed, length, start, index);
            }
            start = index;
        }
        segmenter_take(&state, property);
    }
    place(kind, data, reversed, length, start, length);
    return result;
}

static PyMethodDef methods[] = {
    {"load", load, METH_VARARGS,
     "load(block_index, blocks): the property tables, as graphemes.py builds them."},
    {"reverse", reverse, METH_O,
     "reverse(text): text with its grapheme clusters in reverse order, each kept whole."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "reverserd._clusters",
    "Text reversed by extended grapheme cluster, in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__clusters(void)
{
    return PyModule_Create(&module_definition);
}
