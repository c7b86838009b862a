/*
 * One LSTM step of the seed network, for moderation/numpy_lstm.py (loaded with ctypes).
 *
 * NumPy computes a step as a dozen whole-array passes (add, tanh, multiply, ...),
 * and its float32 tanh is a vectorised loop only on some CPUs: without AVX-512 it
 * runs one element at a time, over half of a step's time. This does the whole
 * elementwise part of a step in one pass over each row, with a tanh the compiler
 * vectorises; the matrix products stay in NumPy's BLAS.
 *
 * The tanh is Eigen's float32 rational approximation (the one TensorFlow's CPU
 * kernels use): absolute error below 4e-7, which keeps scores within 1e-5 of the
 * Keras layers' (tests/test_numpy_lstm.py holds it to that).
 *
 * Built by setup.py as an optional extension: where it cannot be built, NumPy
 * computes the step itself (numpy_lstm.compiled_cell() says which).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static inline float clamped_tanh(float x) {
    const float limit = 7.90531110763549805f; /* tanh is 1 - 2e-7 there: float32 1 */
    x = x < -limit ? -limit : x;
    x = x > limit ? limit : x;
    const float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * x;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return p / q;
}

/*
 * rows rows of one step, in place. gates[r] (4 x units, order i, f, o, c; the
 * sigmoid gates' pre-activations halved) holds the recurrent product; the step
 * adds addend[ids[r]] (layer 1: the embedding's input projection, one row per
 * id) or addend itself when ids is NULL (layer 2: the bias), then updates
 * cell[r] (units wide) and writes hidden[r * hidden_stride ...].
 * sigmoid(x) = (1 + tanh(x / 2)) / 2, so one tanh serves all four gates.
 */
__attribute__((target_clones("avx2", "default")))
void lstm_cell_step(int64_t rows, int64_t units, const float *restrict gates, const float *restrict addend,
                    const int32_t *restrict ids, float *restrict cell, float *restrict hidden,
                    int64_t hidden_stride) {
    const int64_t width = 4 * units;
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict g = gates + r * width;
        const float *restrict a = ids ? addend + (int64_t)ids[r] * width : addend;
        float *restrict c = cell + r * units;
        float *restrict h = hidden + r * hidden_stride;
        for (int64_t j = 0; j < units; j++) {
            const float input = 0.5f + 0.5f * clamped_tanh(g[j] + a[j]);
            const float forget = 0.5f + 0.5f * clamped_tanh(g[units + j] + a[units + j]);
            const float output = 0.5f + 0.5f * clamped_tanh(g[2 * units + j] + a[2 * units + j]);
            const float candidate = clamped_tanh(g[3 * units + j] + a[3 * units + j]);
            const float next = forget * c[j] + input * candidate;
            c[j] = next;
            h[j] = output * clamped_tanh(next);
        }
    }
}

/* A module of its own name, so that the file is an ordinary extension; its one function is called through ctypes. */
static struct PyModuleDef lstm_cell_module = {
    PyModuleDef_HEAD_INIT, "_lstm_cell",
    "The seed network's LSTM step in C; see moderation/numpy_lstm.py.", -1, NULL,
};

PyMODINIT_FUNC PyInit__lstm_cell(void) { return PyModule_Create(&lstm_cell_module); }
