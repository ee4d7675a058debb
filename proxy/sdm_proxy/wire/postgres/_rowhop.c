/* The relay's one per-row loop, compiled: hop over a run of DataRow message headers.
 *
 * Why C: a result of a million rows is a million DataRows. The gateway never looks inside them;
 * it only has to stay on message boundaries (to see CommandComplete/ReadyForQuery) and count rows.
 * In Python that header hop is the only per-row work left on the relay path (~0.2 us a row).
 *
 * hop(data, off, datarow) -> (off, rows, bad)
 *   Starting at ``off``, where a message of type ``datarow`` begins, walk consecutive messages of
 *   that type while a whole 5-byte header is in ``data``. Returns the offset after the last one
 *   walked (it may lie past the end of ``data`` when that row continues in the next chunk), how many
 *   were walked, and -1; or, on a length below 4 (a malformed header), the offset of that message,
 *   the rows before it and the bad length. Same contract as the Python loop in framing_splitter.py.
 *
 * Bytes from strangers: every read is bounds-checked against len(data) (a header is read only when
 * 5 bytes remain); lengths are unsigned 32-bit and offsets 64-bit, so no sum can overflow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *
hop(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t off;
    int datarow;
    if (!PyArg_ParseTuple(args, "y*ni", &view, &off, &datarow))
        return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    const Py_ssize_t n = view.len;
    long long rows = 0;
    long long bad = -1;
    if (off < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "negative offset");
        return NULL;
    }
    while (n - off >= 5 && p[off] == (unsigned char)datarow) {
        uint32_t length = ((uint32_t)p[off + 1] << 24) | ((uint32_t)p[off + 2] << 16)
                        | ((uint32_t)p[off + 3] << 8) | (uint32_t)p[off + 4];
        if (length < 4) {
            bad = (long long)length;
            break;
        }
        rows += 1;
        off += 1 + (Py_ssize_t)length;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("nLL", off, rows, bad);
}

static PyMethodDef methods[] = {
    {"hop", hop, METH_VARARGS, "hop(data, off, datarow) -> (off, rows, bad): walk a run of DataRow headers"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowhop", "The relay's DataRow header hop, compiled (see framing_splitter.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__rowhop(void)
{
    return PyModule_Create(&module);
}
