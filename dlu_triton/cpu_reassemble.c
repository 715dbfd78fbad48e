/* CARAFE's reassembly on the CPU, written straight into the output's layout:

       out[c, yo, xo] = sum over taps (ky, kx) of K[g(c), ky*k + kx, yo, xo] * X[c, yo/s + ky - r, xo/s + kx - r]

   with X zero outside the image: unfold's zeros, so a NaN or Inf kernel entry on an outside tap
   gives NaN, as in the reference. dlu_triton/cpu_native.py compiles this file at first use with
   the machine's C compiler and calls it through ctypes, one call per thread per block of rows.

   Vectorised over output columns. A tile is TW output columns (a multiple of s) of a band of
   source rows; its kernels are packed once ([row][sy][tap][TW], zero past the image), a band's
   worth sized to stay in L2. Then, CB channels at a time, each input row the taps read is
   expanded s-fold along x (P[i] = X[xo0 / s + i / s - r]), so that tap (ky, kx) of output
   column xo0 + l reads P[ky][l + kx*s]: contiguous vector loads. Each kernel vector loaded
   serves CB channels, whose accumulators stay in registers. The k expanded rows a source row
   reads form a ring (a few KiB, in L1), one new row per source row.

   The body below is compiled twice, for float and double (the file includes itself). */
#ifndef T
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CB 8                 /* channels that share each kernel vector */
#define TILE 64              /* output columns of a tile, at least (rounded up to s vectors) */
#define BAND_BYTES (1 << 18) /* a band's packed kernels */
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#ifdef _OPENMP
#include <omp.h>
#else
#define omp_get_max_threads() 1
#endif

#define T float
#define SUFFIX(name) name##_f32
#include "cpu_reassemble.c"
#undef T
#undef SUFFIX

#define T double
#define SUFFIX(name) name##_f64
#include "cpu_reassemble.c"
#undef T
#undef SUFFIX

#else
typedef T SUFFIX(vec) __attribute__((vector_size(32)));
#define V SUFFIX(vec)
#define VL ((int64_t)(sizeof(V) / sizeof(T)))

#define EXPAND(S)                                                                                          \
    for (int64_t i = 0; i < pw / (S); i++) {                                                               \
        const int64_t q = q0 + i;                                                                          \
        const T v = q >= 0 && q < W ? src[q * xw] : 0;                                                     \
        for (int64_t u = 0; u < (S); u++) row[i * (S) + u] = v;                                            \
    }

/* Input row yy of channels ch0 .. ch0 + cb (zeros for the rest of CB) over the tile's source
   columns q0 - r .. q0 + n + r - 1, each repeated s times: row[j * pw + i], i < pw = (n + 2r) * s. */
static void SUFFIX(expand)(T *row, int64_t pw, const T *x, int64_t xc, int64_t xh, int64_t xw, int64_t ch0,
                           int64_t cb, int64_t yy, int64_t H, int64_t W, int64_t s, int64_t q0) {
    for (int64_t j = 0; j < CB; j++, row += pw) {
        if (j >= cb || yy < 0 || yy >= H) {
            memset(row, 0, sizeof(T) * (size_t)pw);
            continue;
        }
        const T *src = x + (ch0 + j) * xc + yy * xh;
        switch (s) { /* constant repeat counts unroll */
        case 1: EXPAND(1); break;
        case 2: EXPAND(2); break;
        case 4: EXPAND(4); break;
        default: EXPAND(s);
        }
    }
}

/* The kernels of output rows b0*s .. b1*s, columns xo0 .. xo0 + valid, of group g into
   kt[row][tap][tw], zero past the image. CARAFE (off NULL): m holds the image's masks [G, k*k,
   H*s, W*s], strides per group, tap, row and column. DLU: m holds the low-resolution kernel space
   [G, k*k, H, W] and off the offsets [2*G*s*s, H, W] (pixel_shuffle's channel order), each output
   pixel's kernel sampled bilinearly at its source pixel plus its offset, clamped to the image
   (grid_sample with border padding and align_corners=True); a NaN offset gives a NaN kernel. */
static void SUFFIX(pack)(T *kt, int64_t tw, const T *m, int64_t mg, int64_t mt, int64_t my, int64_t mx, const T *off,
                         int64_t fc, int64_t fy, int64_t fx, int64_t H, int64_t W, int64_t kk, int64_t s, int64_t g,
                         int64_t b0, int64_t b1, int64_t xo0, int64_t valid) {
    for (int64_t row = 0; row < (b1 - b0) * s; row++) {
        T *dst = kt + row * kk * tw;
        for (int64_t t = 0; t < kk; t++)
            for (int64_t l = valid; l < tw; l++) dst[t * tw + l] = 0;
        if (!off) {
            for (int64_t t = 0; t < kk; t++) {
                const T *src = m + g * mg + t * mt + (b0 * s + row) * my + xo0 * mx;
                for (int64_t l = 0; l < valid; l++) dst[t * tw + l] = src[l * mx];
            }
            continue;
        }
        const int64_t y = b0 + row / s, sy = row % s;
        for (int64_t l = 0; l < valid; l++) {
            const int64_t x = (xo0 + l) / s, sx = (xo0 + l) % s, c = ((2 * g * s) + sy) * s + sx;
            T px = x + off[c * fc + y * fy + x * fx], py = y + off[(c + s * s) * fc + y * fy + x * fx];
            px = W > 1 ? (px < 0 ? 0 : px > W - 1 ? W - 1 : px) : px != px ? px : 0; /* keeps a NaN */
            py = H > 1 ? (py < 0 ? 0 : py > H - 1 ? H - 1 : py) : py != py ? py : 0;
            if (px != px || py != py) {
                for (int64_t t = 0; t < kk; t++) dst[t * tw + l] = px + py;
                continue;
            }
            const int64_t ix = (int64_t)px, iy = (int64_t)py; /* floor: both are >= 0 */
            const T fx1 = px - ix, fy1 = py - iy, fx0 = 1 - fx1, fy0 = 1 - fy1;
            const int64_t right = ix + 1 < W, down = iy + 1 < H; /* grid_sample skips corners outside */
            const T *p = m + g * mg + iy * my + ix * mx;
            for (int64_t t = 0; t < kk; t++, p += mt) {
                T v = fy0 * fx0 * p[0];
                if (right) v += fy0 * fx1 * p[mx];
                if (down) v += fy1 * fx0 * p[my];
                if (right && down) v += fy1 * fx1 * p[my + mx];
                dst[t * tw + l] = v;
            }
        }
    }
}

/* Outputs of group g, source rows b0 .. b1, of one image (the arguments as reassemble's); kt and
   ring: this thread's scratch. */
static void SUFFIX(band)(T *kt, T *ring, int64_t tw, int64_t pw, const T *x, int64_t xc, int64_t xh, int64_t xw,
                         const T *m, int64_t mg, int64_t mt, int64_t my, int64_t mx, const T *off, int64_t fc,
                         int64_t fy, int64_t fx, T *o, int64_t oc, int64_t oy, int64_t ox, int64_t C, int64_t H,
                         int64_t W, int64_t k, int64_t G, int64_t s, int64_t g, int64_t b0, int64_t b1) {
    const int64_t r = k / 2, kk = k * k, wo = W * s, cpg = C / G;
    for (int64_t xo0 = 0; xo0 < wo; xo0 += tw) {
        const int64_t valid = MIN(wo - xo0, tw), q0 = xo0 / s - r;
        SUFFIX(pack)(kt, tw, m, mg, mt, my, mx, off, fc, fy, fx, H, W, kk, s, g, b0, b1, xo0, valid);
        for (int64_t c0 = 0; c0 < cpg; c0 += CB) {
            const int64_t cb = MIN(cpg - c0, CB), ch0 = g * cpg + c0;
            for (int64_t yy = b0 - r; yy < b0 + r; yy++)
                SUFFIX(expand)(ring + (yy - b0 + k) % k * CB * pw, pw, x, xc, xh, xw, ch0, cb, yy, H, W, s, q0);
            for (int64_t y = b0; y < b1; y++) {
                SUFFIX(expand)(ring + (y + r - b0) % k * CB * pw, pw, x, xc, xh, xw, ch0, cb, y + r, H, W, s, q0);
                for (int64_t sy = 0; sy < s; sy++)
                    for (int64_t v = 0; v < valid; v += VL) {
                        const T *kp = kt + ((y - b0) * s + sy) * kk * tw + v;
                        V acc[CB] = {0};
                        for (int64_t ky = 0, slot = (y - r - b0 + k) % k; ky < k; ky++, slot++) {
                            const T *p = ring + (slot < k ? slot : slot - k) * CB * pw + v;
                            for (int64_t kx = 0; kx < k; kx++, kp += tw) {
                                V kv, pj;
                                memcpy(&kv, kp, sizeof kv);
                                for (int j = 0; j < CB; j++) {
                                    memcpy(&pj, p + j * pw + kx * s, sizeof pj);
                                    acc[j] += kv * pj;
                                }
                            }
                        }
                        const int64_t n = MIN(valid - v, VL);
                        T *dst = o + ch0 * oc + (y * s + sy) * oy + (xo0 + v) * ox;
                        if (n == VL && ox == 1) /* channels first: a vector per channel */
                            for (int64_t j = 0; j < cb; j++) memcpy(dst + j * oc, &acc[j], sizeof acc[j]);
                        else if (oc == 1 && cb == CB) /* channels last: CB channels per pixel */
                            for (int64_t l = 0; l < n; l++)
                                for (int j = 0; j < CB; j++) dst[l * ox + j] = acc[j][l];
                        else
                            for (int64_t j = 0; j < cb; j++)
                                for (int64_t l = 0; l < n; l++) dst[j * oc + l * ox] = acc[j][l];
                    }
            }
        }
    }
}

/* The whole output of one image. x, o: the image's features [C, H, W] and output [C, H*s, W*s],
   strides in elements; m, off: its kernels, as pack takes them. The (group, band of rows) items
   are shared out among OpenMP's threads (torch's own pool: the library links the libgomp torch
   has loaded), their count a multiple of the threads'. Returns 0, or -1 when a thread's scratch
   cannot be allocated. */
int SUFFIX(reassemble)(const T *x, int64_t xc, int64_t xh, int64_t xw, const T *m, int64_t mg, int64_t mt,
                       int64_t my, int64_t mx, const T *off, int64_t fc, int64_t fy, int64_t fx, T *o, int64_t oc,
                       int64_t oy, int64_t ox, int64_t C, int64_t H, int64_t W, int64_t k, int64_t G, int64_t s) {
    const int64_t kk = k * k, tw = s * VL * ((TILE + s * VL - 1) / (s * VL)), pw = tw + (k - 1) * s;
    const int64_t rows = MAX(1, BAND_BYTES / (int64_t)sizeof(T) / (s * kk * tw)), threads = omp_get_max_threads();
    int64_t bands = (H + rows - 1) / rows;
    for (int64_t more = 0; more < threads && (G * bands) % threads; more++) bands++;
    const int64_t most = (H + bands - 1) / bands;
    int failed = 0;
#pragma omp parallel
    {
        T *kt = malloc(sizeof(T) * (size_t)(most * s * kk * tw + k * CB * pw));
        if (!kt) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t item = 0; item < G * bands; item++) {
            const int64_t g = item / bands, b = item % bands;
            if (kt)
                SUFFIX(band)(kt, kt + most * s * kk * tw, tw, pw, x, xc, xh, xw, m, mg, mt, my, mx, off, fc, fy, fx, o,
                             oc, oy, ox, C, H, W, k, G, s, g, b * H / bands, (b + 1) * H / bands);
        }
        free(kt);
    }
    return failed ? -1 : 0;
}
#undef V
#undef VL
#undef EXPAND
#endif
