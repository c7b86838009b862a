/*
 * The seed network's LSTMs for moderation/numpy_lstm.py (loaded with ctypes): one step
 * (lstm_cell_step, any CPU) and the whole forward pass (lstm_forward, AVX2 and FMA).
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

/* Eigen's float32 tanh: x * P(x^2) / Q(x^2) on [-TANH_LIMIT, TANH_LIMIT], where tanh is 1 - 2e-7 (float32 1)
   beyond. Shared by the scalar step and the AVX2 forward pass. */
#define TANH_LIMIT 7.90531110763549805f
static const float TANH_P[7] = {-2.76076847742355e-16f, 2.00018790482477e-13f, -8.60467152213735e-11f,
                                5.12229709037114e-08f, 1.48572235717979e-05f, 6.37261928875436e-04f,
                                4.89352455891786e-03f}; /* highest power first */
static const float TANH_Q[4] = {1.19825839466702e-06f, 1.18534705686654e-04f, 2.26843463243900e-03f,
                                4.89352518554385e-03f};

static inline float clamped_tanh(float x) {
    x = x < -TANH_LIMIT ? -TANH_LIMIT : x;
    x = x > TANH_LIMIT ? TANH_LIMIT : x;
    const float x2 = x * x;
    float p = TANH_P[0];
    for (int i = 1; i < 7; i++) p = p * x2 + TANH_P[i];
    p = p * x;
    float q = TANH_Q[0];
    for (int i = 1; i < 4; i++) q = q * x2 + TANH_Q[i];
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

/*
 * The whole forward pass of both LSTMs, for CPUs with AVX2 and FMA: lstm_forward.
 *
 * The step above leaves the matrix products to BLAS, which sees one step of
 * all rows at a time: every step writes and reads back gate buffers of
 * rows x 4 units, far larger than the core's caches, and pays a BLAS call
 * per step. Here a block of BLOCK rows runs through all of its steps before
 * the next block starts: its states and gates (a few KiB) never leave the L1
 * cache, the weights (about 110 KiB) stay in L2, and each product is a
 * register-blocked kernel of BLOCK rows x 16 columns, 12 FMA accumulators.
 * Rows come sorted by length, so the rows of a block end at nearly the same
 * step; a row whose text has ended is still computed with its block but its
 * state is no longer updated, which is what the masked Keras layers do.
 */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define BLOCK 6
#define MAX_UNITS1 256
#define MAX_UNITS2 256

__attribute__((target("avx2,fma"))) static inline __m256 tanh8(__m256 x) {
    const __m256 limit = _mm256_set1_ps(TANH_LIMIT);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_sub_ps(_mm256_setzero_ps(), limit)), limit);
    const __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(TANH_P[0]);
    for (int i = 1; i < 7; i++) p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P[i]));
    p = _mm256_mul_ps(p, x);
    __m256 q = _mm256_set1_ps(TANH_Q[0]);
    for (int i = 1; i < 4; i++) q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(TANH_Q[i]));
    return _mm256_div_ps(p, q);
}

/* out[r][0..n) = init[r][0..n) + sum_k x[r][k] * weights[k][0..n), for BLOCK rows; n a multiple of 16. */
__attribute__((target("avx2,fma"))) static inline void block_gates(
        const float *restrict x, int64_t x_stride, int64_t depth, const float *restrict weights, int64_t n,
        const float *const init[BLOCK], float *restrict out) {
    for (int64_t j = 0; j < n; j += 16) {
        __m256 acc[BLOCK][2];
        for (int r = 0; r < BLOCK; r++) {
            acc[r][0] = _mm256_loadu_ps(init[r] + j);
            acc[r][1] = _mm256_loadu_ps(init[r] + j + 8);
        }
        const float *restrict w = weights + j;
        for (int64_t k = 0; k < depth; k++, w += n) {
            const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
            for (int r = 0; r < BLOCK; r++) {
                const __m256 v = _mm256_broadcast_ss(x + r * x_stride + k);
                acc[r][0] = _mm256_fmadd_ps(v, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(v, w1, acc[r][1]);
            }
        }
        for (int r = 0; r < BLOCK; r++) {
            _mm256_storeu_ps(out + r * n + j, acc[r][0]);
            _mm256_storeu_ps(out + r * n + j + 8, acc[r][1]);
        }
    }
}

/* The cell update of one row from its gates (i, f, o halved; c): cell and hidden in place; units a multiple of 8. */
__attribute__((target("avx2,fma"))) static inline void row_update(const float *restrict g, int64_t units,
                                                                   float *restrict cell, float *restrict hidden) {
    const __m256 half = _mm256_set1_ps(0.5f);
    for (int64_t j = 0; j < units; j += 8) {
        const __m256 input = _mm256_fmadd_ps(half, tanh8(_mm256_loadu_ps(g + j)), half);
        const __m256 forget = _mm256_fmadd_ps(half, tanh8(_mm256_loadu_ps(g + units + j)), half);
        const __m256 output = _mm256_fmadd_ps(half, tanh8(_mm256_loadu_ps(g + 2 * units + j)), half);
        const __m256 candidate = tanh8(_mm256_loadu_ps(g + 3 * units + j));
        const __m256 next = _mm256_fmadd_ps(forget, _mm256_loadu_ps(cell + j), _mm256_mul_ps(input, candidate));
        _mm256_storeu_ps(cell + j, next);
        _mm256_storeu_ps(hidden + j, _mm256_mul_ps(output, tanh8(next)));
    }
}

__attribute__((target("avx2,fma"))) static void forward_avx2(
        int64_t rows, int64_t width, const int32_t *restrict ids, const int64_t *restrict lengths,
        const float *restrict table1, const float *restrict recurrent1, const float *restrict kernel2,
        const float *restrict bias2, int64_t units1, int64_t units2, float *restrict out) {
    const int64_t stride = units1 + units2;
    float state[BLOCK][MAX_UNITS1 + MAX_UNITS2] __attribute__((aligned(32)));  /* [h1 | h2] per row */
    float cell1[BLOCK][MAX_UNITS1] __attribute__((aligned(32)));
    float cell2[BLOCK][MAX_UNITS2] __attribute__((aligned(32)));
    float gates[BLOCK * 4 * (MAX_UNITS1 > MAX_UNITS2 ? MAX_UNITS1 : MAX_UNITS2)] __attribute__((aligned(32)));
    const float *init[BLOCK];
    for (int64_t first = 0; first < rows; first += BLOCK) {
        const int64_t count = rows - first < BLOCK ? rows - first : BLOCK;
        int64_t length[BLOCK], steps = 0;
        const int32_t *row_ids[BLOCK];
        for (int r = 0; r < BLOCK; r++) {  /* a short last block repeats its first row, never updated */
            const int64_t row = first + (r < count ? r : 0);
            length[r] = r < count ? lengths[row] : 0;
            row_ids[r] = ids + row * width;
            steps = length[r] > steps ? length[r] : steps;
            for (int64_t j = 0; j < stride; j++) state[r][j] = 0.0f;
            for (int64_t j = 0; j < units1; j++) cell1[r][j] = 0.0f;
            for (int64_t j = 0; j < units2; j++) cell2[r][j] = 0.0f;
        }
        for (int64_t t = 0; t < steps; t++) {
            for (int r = 0; r < BLOCK; r++) init[r] = table1 + (int64_t)row_ids[r][t] * 4 * units1;
            for (int r = 0; r < BLOCK; r++) {  /* the next step's input rows: from L3 while this step computes */
                if (t + 1 >= length[r]) continue;
                const char *next = (const char *)(table1 + (int64_t)row_ids[r][t + 1] * 4 * units1);
                for (int64_t byte = 0; byte < 4 * units1 * (int64_t)sizeof(float); byte += 64)
                    _mm_prefetch(next + byte, _MM_HINT_T0);
            }
            block_gates(&state[0][0], MAX_UNITS1 + MAX_UNITS2, units1, recurrent1, 4 * units1, init, gates);
            for (int r = 0; r < BLOCK; r++)
                if (t < length[r]) row_update(gates + r * 4 * units1, units1, cell1[r], state[r]);
            for (int r = 0; r < BLOCK; r++) init[r] = bias2;
            block_gates(&state[0][0], MAX_UNITS1 + MAX_UNITS2, stride, kernel2, 4 * units2, init, gates);
            for (int r = 0; r < BLOCK; r++)
                if (t < length[r]) row_update(gates + r * 4 * units2, units2, cell2[r], state[r] + units1);
        }
        for (int64_t r = 0; r < count; r++)
            for (int64_t j = 0; j < units2; j++) out[(first + r) * units2 + j] = state[r][units1 + j];
    }
}
#endif

/*
 * Both LSTMs over rows of right-padded ids [rows, width] (int32, row-major),
 * each row's length in lengths, writing layer 2's last hidden state per row
 * to out [rows, units2]. Weights as for lstm_cell_step: table1 is layer 1's
 * input projection per id, recurrent1 its recurrent kernel, kernel2 layer 2's
 * [kernel; recurrent kernel], bias2 its bias; gate columns i, f, o, c with the
 * sigmoid gates halved. Returns 0, or -1 where this CPU or these sizes are not
 * supported (units not a multiple of 8 or over 256): the caller uses the step.
 */
int lstm_forward(int64_t rows, int64_t width, const int32_t *ids, const int64_t *lengths, const float *table1,
                 const float *recurrent1, const float *kernel2, const float *bias2, int64_t units1,
                 int64_t units2, float *out) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (units1 <= 0 || units2 <= 0 || units1 % 8 || units2 % 8 || units1 > MAX_UNITS1 || units2 > MAX_UNITS2)
        return -1;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return -1;
    forward_avx2(rows, width, ids, lengths, table1, recurrent1, kernel2, bias2, units1, units2, out);
    return 0;
#else
    (void)rows; (void)width; (void)ids; (void)lengths; (void)table1; (void)recurrent1; (void)kernel2;
    (void)bias2; (void)units1; (void)units2; (void)out;
    return -1;
#endif
}

/* A module of its own name, so that the file is an ordinary extension; its one function is called through ctypes. */
static struct PyModuleDef lstm_cell_module = {
    PyModuleDef_HEAD_INIT, "_lstm_cell",
    "The seed network's LSTM step in C; see moderation/numpy_lstm.py.", -1, NULL,
};

PyMODINIT_FUNC PyInit__lstm_cell(void) { return PyModule_Create(&lstm_cell_module); }
