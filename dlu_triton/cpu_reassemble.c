/* CARAFE's reassembly, and so DLU's, on the CPU, read and written in the tensors' own layouts.

   Forward, for output pixel (yo, xo) of channel c in group g, source pixel (yo/s, xo/s):

       out[c, yo, xo] = sum over taps t = (ky, kx) of K[g, t, yo, xo] * X[c, yo/s + ky - r, xo/s + kx - r]

   with X zero outside the image (unfold's zeros: a NaN or Inf kernel entry on an outside tap
   gives NaN, as in the reference). Backward, with dY the output's gradient:

       dK[g, t, yo, xo] = sum over c in g of dY[c, yo, xo] * X[c, yo/s + ky - r, xo/s + kx - r]
       dX[c, yy, q]     = sum of K[g, t, yo, xo] * dY[c, yo, xo] over the (t, yo, xo) that read (yy, q)

   (the forward's products, so NaN and Inf land where the reference puts them; what falls on the
   padding is dropped, as fold drops it). DLU's K is sampled here from its kernel space (see
   pack), and dK goes back through that sampling to the kernel space and the offsets (unpack).

   Vectorised over output columns. A tile is TW output columns (a multiple of s) of a band of
   source rows; its kernels are packed once ([row][tap][TW], zero past the image), a band's worth
   sized to stay in L2. Then, CB channels at a time, each input row the taps read is expanded
   s-fold along x (E[i] = X[xo0/s - r + i/s]), so tap (ky, kx) of output column xo0 + l reads
   E[ky][l + kx*s]: contiguous vector loads. Each kernel vector loaded serves CB channels, whose
   accumulators stay in registers. The k expanded rows a source row reads form a ring (a few KiB,
   in L1), one new row per source row. The backward runs the same loop: dK's tile accumulates
   dY * E over the channel blocks, and dX's contributions K * dY accumulate in a second ring of
   expanded rows, each folded back (its s copies summed) into dX as it leaves the ring.

   Threads: (group, band) items are shared out by OpenMP, over as many threads as the caller
   passes (torch.get_num_threads(): OpenMP's own count is per calling thread, and a new Python
   thread would get the machine's). The library links libgomp.so.1, so in a process where torch
   has loaded its libgomp it runs on torch's own threads. The backward's bands also write dX rows
   r either side of themselves, so they run in two waves, even bands then odd, with bands at
   least 2r rows high: no two bands of a wave touch the same row. DLU's offsets can send a
   pixel's kernel anywhere in the kernel space, so each thread adds that gradient to a share of
   its own (see run).

   Sizes: every product that sizes the scratch is computed with overflow checks (plan), and
   `allocation` tells the caller beforehand what a call would allocate, or that it overflows.

   dlu_triton/cpu_native.py compiles this file at first use and calls it through ctypes. The body
   below is compiled twice, for float and for double: the file includes itself. */
#ifndef T
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Sizes chosen by A/B on a 2-core x86_64 CPU with AVX-512 (TILE 64 -> 256 cut the
   forward 36 -> 27 ms at the FPN shape, one thread; CB 4, 8 and 16 within noise). */
#define CB 8                 /* channels that share each kernel vector */
#define TILE 256             /* output columns of a tile, at least (rounded up to s vectors) */
#define BAND_BYTES (1 << 18) /* a band's packed kernels (the L2's share) */
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#ifdef _OPENMP
#include <omp.h>
#else
#define omp_get_thread_num() 0
#endif

/* Checked arithmetic for every product that sizes or indexes memory: true on overflow. */
#define MUL(x, y, r) __builtin_mul_overflow(x, y, r)
#define ADD(x, y, r) __builtin_add_overflow(x, y, r)

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
typedef T SUFFIX(vec) __attribute__((vector_size(32))); /* AVX2's width; NEON's two */
#define V SUFFIX(vec)
#define VL ((int64_t)(sizeof(V) / sizeof(T)))

/* One image's call: tensors as pointers and strides in elements, and its sizes. */
typedef struct {
    const T *x; /* features [C, H, W] */
    int64_t xc, xh, xw;
    const T *m; /* CARAFE: masks [G, k*k, H*s, W*s]; DLU: the kernel space [G, k*k, H, W] */
    int64_t mg, mt, my, mx;
    const T *off; /* DLU: offsets [2*G*s*s, H, W]; NULL for CARAFE */
    int64_t fc, fy, fx;
    T *o; /* forward: the output [C, H*s, W*s]; backward: its gradient, read */
    int64_t oc, oy, ox;
    T *dx; /* backward: the features' gradient [C, H, W], added to */
    int64_t dc, dh, dw;
    T *dk; /* CARAFE's backward: the masks' gradient [G, k*k, H*s, W*s] */
    int64_t kg, kt, ky, kx;
    T *ds; /* DLU's backward: this thread's share of the kernel space's gradient [G, k*k, H, W], added to */
    T *dof; /* DLU's backward: the offsets' gradient [2*G*s*s, H, W] */
    int64_t gc, gy, gx;
    int64_t C, H, W, k, G, s, threads;
    int64_t r, kk, cpg, wo, tw, pw, bands, most, scratch, space; /* derived: see plan */
} SUFFIX(call);
#define CALL SUFFIX(call)

/* The call's derived sizes: a tile's output columns tw, an expanded row's length pw, the bands
   (sized to BAND_BYTES, their count rounded up to fill the threads; the backward's in two waves)
   and the most rows one holds, and what the threads allocate: `scratch` elements each (kt,
   then in the backward dK's tile, then the ring(s) of CB * pw-long rows) and, with `shares`
   (DLU's backward), a share of `space` elements of the kernel space's gradient each. Returns
   0, or -2 when a size overflows 64 bits (cpu_native.py refuses such sizes before calling). */
static int SUFFIX(plan)(CALL *a, int backward, int shares) {
#ifndef _OPENMP
    a->threads = 1;
#endif
    a->threads = MAX(1, a->threads);
    const int64_t s = a->s, k = a->k, h = a->H, threads = a->threads, waves = backward ? 2 : 1;
    int64_t sv, wide, tile, rings, plane, bytes;
    a->r = k / 2, a->cpg = a->C / a->G, a->space = 0;
    if (MUL(k, k, &a->kk) || MUL(a->W, s, &a->wo) || MUL(s, VL, &sv) || ADD(sv, TILE - 1, &wide) ||
        MUL(sv, wide / sv, &a->tw) || MUL(k - 1, s, &a->pw) || ADD(a->pw, a->tw, &a->pw) || MUL(s, a->kk, &tile) ||
        MUL(tile, a->tw, &tile)) /* tile: the elements of one source row's kernels */
        return -2;
    const int64_t rows = MAX(1, BAND_BYTES / (int64_t)sizeof(T) / tile);
    int64_t bands = (h + rows - 1) / rows;
    /* every wave's items a multiple of the threads, where a few more bands make it so */
    for (int64_t more = 0; more < waves * threads && (bands % waves || (a->G * bands / waves) % threads); more++) bands++;
    if (backward && a->r > 0) bands = MAX(1, MIN(bands, h / (2 * a->r))); /* no two bands of a wave meet */
    a->bands = bands = MAX(1, MIN(bands, h));
    a->most = (h + bands - 1) / bands;
    if (shares && (MUL(h, a->W, &plane) || MUL(plane, a->kk, &plane) || MUL(plane, a->G, &a->space)))
        return -2;
    if (MUL(a->most, tile, &tile) || MUL(tile, 2, &tile) || MUL(a->pw, 2 * k * CB, &rings) ||
        ADD(tile, rings, &a->scratch) || ADD(a->scratch, a->space, &bytes) || MUL(bytes, threads, &bytes) ||
        MUL(bytes, (int64_t)sizeof(T), &bytes))
        return -2;
    return 0;
}

/* Rows yy of channels ch0 .. ch0 + cb (zeros for the rest of CB) over the tile's source columns
   q0 .. q0 + pw/s - 1, each repeated s times: row[j * pw + i] = X[ch0 + j, yy, q0 + i/s]. */
#define EXPAND(S, XW)                                                                                      \
    for (int64_t i = lo; i < hi; i++)                                                                      \
        for (int64_t u = 0; u < (S); u++) row[i * (S) + u] = src[(i - lo) * (XW)];
static void SUFFIX(expand)(const CALL *a, T *row, int64_t ch0, int64_t cb, int64_t yy, int64_t q0) {
    const int64_t s = a->s, cols = a->pw / s, lo = MIN(MAX(0, -q0), cols), hi = MAX(lo, MIN(a->W - q0, cols));
    for (int64_t j = 0; j < CB; j++, row += a->pw) {
        if (j >= cb || yy < 0 || yy >= a->H) {
            memset(row, 0, sizeof(T) * (size_t)a->pw);
            continue;
        }
        memset(row, 0, sizeof(T) * (size_t)(lo * s));
        memset(row + hi * s, 0, sizeof(T) * (size_t)((cols - hi) * s));
        const T *src = a->x + (ch0 + j) * a->xc + yy * a->xh + (q0 + lo) * a->xw;
        if (a->xw == 1 && s == 2) /* the common cases as constants, which vectorise */
            EXPAND(2, 1)
        else if (a->xw == 1 && s == 4)
            EXPAND(4, 1)
        else if (a->xw == 1)
            EXPAND(s, 1)
        else
            EXPAND(s, a->xw)
    }
}
#undef EXPAND

/* expand's adjoint: dX[ch0 + j, yy, q0 + i] += the s copies of row[j * pw + i*s ..], for the
   columns inside the image. */
#define FOLD(S)                                                                                            \
    for (int64_t i = lo; i < hi; i++) {                                                                    \
        T sum = 0;                                                                                         \
        for (int64_t u = 0; u < (S); u++) sum += row[i * (S) + u];                                         \
        dst[(i - lo) * a->dw] += sum;                                                                      \
    }
static void SUFFIX(fold)(const CALL *a, const T *row, int64_t ch0, int64_t cb, int64_t yy, int64_t q0) {
    if (yy < 0 || yy >= a->H) return;
    const int64_t lo = MAX(0, -q0), hi = MIN(a->pw / a->s, a->W - q0);
    for (int64_t j = 0; j < cb; j++, row += a->pw) {
        T *dst = a->dx + (ch0 + j) * a->dc + yy * a->dh + (q0 + lo) * a->dw;
        switch (a->s) { /* constant repeat counts unroll */
        case 1: FOLD(1); break;
        case 2: FOLD(2); break;
        case 4: FOLD(4); break;
        default: FOLD(a->s);
        }
    }
}
#undef FOLD

/* The kernels of output rows b0*s .. b1*s, columns xo0 .. xo0 + valid, of group g into
   kt[row][tap][tw], zero past the image. CARAFE: copied from the masks. DLU: each output pixel's
   kernel sampled bilinearly from the kernel space at its source pixel plus its offset (channel
   ((2g + {0: x, 1: y}) * s + sy) * s + sx, pixel_shuffle's order), clamped to the image:
   grid_sample with border padding and align_corners=True. A NaN offset gives a NaN kernel. */
static void SUFFIX(pack)(const CALL *a, T *kt, int64_t g, int64_t b0, int64_t b1, int64_t xo0, int64_t valid) {
    const int64_t s = a->s, tw = a->tw, kk = a->kk, W = a->W, H = a->H;
    for (int64_t row = 0; row < (b1 - b0) * s; row++) {
        T *dst = kt + row * kk * tw;
        for (int64_t t = 0; t < kk; t++)
            for (int64_t l = valid; l < tw; l++) dst[t * tw + l] = 0;
        if (!a->off) {
            for (int64_t t = 0; t < kk; t++) {
                const T *src = a->m + g * a->mg + t * a->mt + (b0 * s + row) * a->my + xo0 * a->mx;
                for (int64_t l = 0; l < valid; l++) dst[t * tw + l] = src[l * a->mx];
            }
            continue;
        }
        const int64_t y = b0 + row / s, sy = row % s, cx = (2 * g * s + sy) * s, cy = cx + s * s;
        const T *offs = a->off + y * a->fy;
        for (int64_t l = 0, x = xo0 / s, sx = xo0 % s; l < valid; l++, sx = sx + 1 < s ? sx + 1 : (x++, 0)) {
            T px = x + offs[(cx + sx) * a->fc + x * a->fx], py = y + offs[(cy + sx) * a->fc + x * a->fx];
            px = W > 1 ? (px < 0 ? 0 : px > W - 1 ? W - 1 : px) : px != px ? px : 0; /* keeps a NaN */
            py = H > 1 ? (py < 0 ? 0 : py > H - 1 ? H - 1 : py) : py != py ? py : 0;
            if (px != px || py != py) {
                for (int64_t t = 0; t < kk; t++) dst[t * tw + l] = px + py;
                continue;
            }
            /* A corner past the last row or column has weight 0 (the position is clamped to it):
               read the pixel itself there, a finite value or the NaN its own corner carries too. */
            const int64_t ix = (int64_t)px, iy = (int64_t)py; /* floor: both are >= 0 */
            const int64_t right = ix + 1 < W ? a->mx : 0, down = iy + 1 < H ? a->my : 0;
            const T fx1 = px - ix, fy1 = py - iy, fx0 = 1 - fx1, fy0 = 1 - fy1;
            const T w00 = fy0 * fx0, w01 = fy0 * fx1, w10 = fy1 * fx0, w11 = fy1 * fx1;
            const T *p = a->m + g * a->mg + iy * a->my + ix * a->mx;
            for (int64_t t = 0; t < kk; t++) {
                const T *q = p + t * a->mt;
                dst[t * tw + l] = w00 * q[0] + w01 * q[right] + w10 * q[down] + w11 * q[right + down];
            }
        }
    }
}

/* DLU's sampling backward for the tile pack sampled: dK (gt, as pack lays kt out) into the kernel
   space's gradient (this thread's ds, contiguous [G, k*k, H, W]) and the offsets' gradient, as
   grid_sample's backward and the reference's chain give them: corners outside the image take
   nothing and count as 0; a position clamped to the border, or on it, has no gradient (the clip's
   derivative); a NaN point sends nothing back and gets a NaN gradient. */
static void SUFFIX(unpack)(const CALL *a, const T *gt, T *ds, int64_t g, int64_t b0, int64_t b1, int64_t xo0,
                           int64_t valid) {
    const int64_t s = a->s, tw = a->tw, kk = a->kk, W = a->W, H = a->H, plane = H * W;
    for (int64_t row = 0; row < (b1 - b0) * s; row++) {
        const T *d = gt + row * kk * tw;
        const int64_t y = b0 + row / s, sy = row % s, cx = (2 * g * s + sy) * s, cy = cx + s * s;
        const T *offs = a->off + y * a->fy;
        for (int64_t l = 0, x = xo0 / s, sx = xo0 % s; l < valid; l++, sx = sx + 1 < s ? sx + 1 : (x++, 0)) {
            T *gox = a->dof + (cx + sx) * a->gc + y * a->gy + x * a->gx, *goy = gox + s * s * a->gc;
            const T rx = x + offs[(cx + sx) * a->fc + x * a->fx], ry = y + offs[(cy + sx) * a->fc + x * a->fx];
            if (rx != rx || ry != ry) {
                *gox = *goy = rx + ry;
                continue;
            }
            const T px = rx < 0 ? 0 : rx > W - 1 ? W - 1 : rx, py = ry < 0 ? 0 : ry > H - 1 ? H - 1 : ry;
            const int64_t ix = (int64_t)px, iy = (int64_t)py, right = ix + 1 < W, down = iy + 1 < H;
            const T fx1 = px - ix, fy1 = py - iy, fx0 = 1 - fx1, fy0 = 1 - fy1;
            const T *p = a->m + g * a->mg + iy * a->my + ix * a->mx;
            T *q = ds + g * kk * plane + iy * W + ix;
            T gx = 0, gy = 0;
            for (int64_t t = 0; t < kk; t++, p += a->mt, q += plane) {
                const T dt = d[t * tw + l];
                const T s00 = p[0], s01 = right ? p[a->mx] : 0, s10 = down ? p[a->my] : 0;
                const T s11 = right && down ? p[a->my + a->mx] : 0;
                q[0] += fy0 * fx0 * dt;
                if (right) q[1] += fy0 * fx1 * dt;
                if (down) q[W] += fy1 * fx0 * dt;
                if (right && down) q[W + 1] += fy1 * fx1 * dt;
                gx += dt * ((s01 - s00) * fy0 + (s11 - s10) * fy1);
                gy += dt * ((s10 - s00) * fx0 + (s11 - s01) * fx1);
            }
            *gox = gx * (rx > 0 && rx < W - 1); /* zero on the border, and everywhere when W = 1 */
            *goy = gy * (ry > 0 && ry < H - 1);
        }
    }
}

static inline V SUFFIX(load)(const T *p) {
    V v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The ring slot of expanded row yy, for a band starting at row b0. */
static inline int64_t SUFFIX(slot)(const CALL *a, int64_t yy, int64_t b0) { return (yy - b0 + a->k) % a->k; }

/* One (group, band) item: the forward's outputs, or the backward's gradients, of source rows
   b0 .. b1. scratch: kt, then (backward) dK's tile, then the ring(s) of CB * pw-long rows. */
static void SUFFIX(band)(const CALL *a, T *scratch, T *ds, int backward, int64_t g, int64_t b0, int64_t b1) {
    const int64_t s = a->s, k = a->k, kk = a->kk, tw = a->tw, pw = a->pw, r = a->r, cpg = a->cpg;
    T *kt = scratch, *gt = kt + a->most * s * kk * tw, *ring = gt + a->most * s * kk * tw, *dring = ring + k * CB * pw;
    for (int64_t xo0 = 0; xo0 < a->wo; xo0 += tw) {
        const int64_t valid = MIN(a->wo - xo0, tw), q0 = xo0 / s - r, rows = (b1 - b0) * s;
        SUFFIX(pack)(a, kt, g, b0, b1, xo0, valid);
        if (backward) memset(gt, 0, sizeof(T) * (size_t)(rows * kk * tw));
        for (int64_t c0 = 0; c0 < cpg; c0 += CB) {
            const int64_t cb = MIN(cpg - c0, CB), ch0 = g * cpg + c0;
            for (int64_t yy = b0 - r; yy < b0 + r; yy++) {
                SUFFIX(expand)(a, ring + SUFFIX(slot)(a, yy, b0) * CB * pw, ch0, cb, yy, q0);
                if (backward) memset(dring + SUFFIX(slot)(a, yy, b0) * CB * pw, 0, sizeof(T) * (size_t)(CB * pw));
            }
            for (int64_t y = b0; y < b1; y++) {
                SUFFIX(expand)(a, ring + SUFFIX(slot)(a, y + r, b0) * CB * pw, ch0, cb, y + r, q0);
                if (backward) memset(dring + SUFFIX(slot)(a, y + r, b0) * CB * pw, 0, sizeof(T) * (size_t)(CB * pw));
                for (int64_t sy = 0; sy < s; sy++) {
                    const int64_t yo = y * s + sy;
                    for (int64_t v = 0; v < valid; v += VL) {
                        const int64_t n = MIN(valid - v, VL);
                        const T *kp = kt + ((y - b0) * s + sy) * kk * tw + v;
                        T *io = a->o + ch0 * a->oc + yo * a->oy + (xo0 + v) * a->ox;
                        if (!backward) {
                            V acc[CB] = {0};
                            for (int64_t ky = 0, slot = SUFFIX(slot)(a, y - r, b0); ky < k; ky++, slot++) {
                                const T *e = ring + (slot < k ? slot : slot - k) * CB * pw + v;
                                for (int64_t kx = 0; kx < k; kx++, kp += tw) {
                                    const V kv = SUFFIX(load)(kp);
                                    for (int j = 0; j < CB; j++) acc[j] += kv * SUFFIX(load)(e + j * pw + kx * s);
                                }
                            }
                            if (n == VL && a->ox == 1) /* channels first: a vector per channel */
                                for (int64_t j = 0; j < cb; j++) memcpy(io + j * a->oc, &acc[j], sizeof acc[j]);
                            else if (a->oc == 1 && cb == CB) /* channels last: CB channels per pixel */
                                for (int64_t l = 0; l < n; l++)
                                    for (int j = 0; j < CB; j++) io[l * a->ox + j] = acc[j][l];
                            else
                                for (int64_t j = 0; j < cb; j++)
                                    for (int64_t l = 0; l < n; l++) io[j * a->oc + l * a->ox] = acc[j][l];
                            continue;
                        }
                        V dy[CB] = {0};
                        for (int64_t j = 0; j < cb; j++)
                            if (n == VL && a->ox == 1)
                                memcpy(&dy[j], io + j * a->oc, sizeof dy[j]);
                            else
                                for (int64_t l = 0; l < n; l++) dy[j][l] = io[j * a->oc + l * a->ox];
                        T *gp = gt + ((y - b0) * s + sy) * kk * tw + v;
                        for (int64_t ky = 0, slot = SUFFIX(slot)(a, y - r, b0); ky < k; ky++, slot++) {
                            const int64_t at = (slot < k ? slot : slot - k) * CB * pw + v;
                            const T *e = ring + at;
                            T *de = dring + at;
                            for (int64_t kx = 0; kx < k; kx++, kp += tw, gp += tw) {
                                const V kv = SUFFIX(load)(kp);
                                V acc[4] = {SUFFIX(load)(gp)}; /* four chains: one would wait on each FMA */
                                for (int j = 0; j < CB; j++) {
                                    T *d = de + j * pw + kx * s;
                                    const V dj = SUFFIX(load)(d) + kv * dy[j];
                                    acc[j % 4] += dy[j] * SUFFIX(load)(e + j * pw + kx * s);
                                    memcpy(d, &dj, sizeof dj);
                                }
                                acc[0] += (acc[1] + acc[2]) + acc[3];
                                memcpy(gp, &acc[0], sizeof acc[0]);
                            }
                        }
                    }
                }
                if (backward) /* row y - r has had all its contributions */
                    SUFFIX(fold)(a, dring + SUFFIX(slot)(a, y - r, b0) * CB * pw, ch0, cb, y - r, q0);
            }
            if (backward)
                for (int64_t yy = b1 - r; yy < b1 + r; yy++)
                    SUFFIX(fold)(a, dring + SUFFIX(slot)(a, yy, b0) * CB * pw, ch0, cb, yy, q0);
        }
        if (backward && a->off)
            SUFFIX(unpack)(a, gt, ds, g, b0, b1, xo0, valid);
        else if (backward)
            for (int64_t row = 0; row < rows; row++)
                for (int64_t t = 0; t < kk; t++) {
                    T *dst = a->dk + g * a->kg + t * a->kt + (b0 * s + row) * a->ky + xo0 * a->kx;
                    for (int64_t l = 0; l < valid; l++) dst[l * a->kx] = gt[(row * kk + t) * tw + l];
                }
    }
}

/* One image, forward or backward, over the call's threads, in the bands plan lays out. DLU's
   backward samples anywhere in the kernel space, so each thread adds to a zeroed copy of its
   gradient, summed into ds at the end in thread order (deterministic for a given thread
   count). Returns 0, -1 when scratch memory cannot be allocated, or plan's -2. */
static int SUFFIX(run)(CALL *a, int backward) {
    const int code = SUFFIX(plan)(a, backward, backward && a->off);
    if (code) return code;
    const int64_t h = a->H, bands = a->bands, threads = a->threads, waves = backward ? 2 : 1;
    const int64_t per_wave = (bands + waves - 1) / waves;
    const size_t scratch = (size_t)a->scratch, space = (size_t)a->space;
    T *shares = space ? calloc((size_t)threads * space, sizeof(T)) : NULL;
    if (space && !shares) return -1;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        T *mine = malloc(sizeof(T) * scratch), *ds = shares ? shares + (size_t)omp_get_thread_num() * space : NULL;
        if (!mine) {
#pragma omp atomic write
            failed = 1;
        }
        for (int64_t wave = 0; wave < waves; wave++) {
#pragma omp for schedule(static)
            for (int64_t item = 0; item < a->G * per_wave; item++) {
                const int64_t g = item / per_wave, b = (item % per_wave) * waves + wave;
                if (mine && b < bands) SUFFIX(band)(a, mine, ds, backward, g, b * h / bands, (b + 1) * h / bands);
            }
        }
        free(mine);
        if (shares) {
#pragma omp for schedule(static)
            for (size_t e = 0; e < space; e++) {
                T sum = 0;
                for (int64_t t = 0; t < threads; t++) sum += shares[(size_t)t * space + e];
                a->ds[e] += sum;
            }
        }
    }
    free(shares);
    return failed ? -1 : 0;
}

/* What a call of these sizes allocates, in bytes: its threads' scratch and, for DLU's backward
   (shares), their shares of the kernel space's gradient; -1 when that overflows 64 bits.
   cpu_native.py asks before calling, and refuses sizes that overflow. */
int64_t SUFFIX(allocation)(int64_t C, int64_t H, int64_t W, int64_t k, int64_t G, int64_t s, int backward, int shares,
                           int64_t threads) {
    CALL a = {.C = C, .H = H, .W = W, .k = k, .G = G, .s = s, .threads = threads};
    if (SUFFIX(plan)(&a, backward, shares)) return -1;
    return (a.scratch + a.space) * a.threads * (int64_t)sizeof(T);
}

/* The forward of one image: out = CARAFE(x, kernels). */
int SUFFIX(reassemble)(const T *x, int64_t xc, int64_t xh, int64_t xw, const T *m, int64_t mg, int64_t mt, int64_t my,
                       int64_t mx, const T *off, int64_t fc, int64_t fy, int64_t fx, T *o, int64_t oc, int64_t oy,
                       int64_t ox, int64_t C, int64_t H, int64_t W, int64_t k, int64_t G, int64_t s,
                       int64_t threads) {
    CALL a = {.x = x, .xc = xc, .xh = xh, .xw = xw, .m = m, .mg = mg, .mt = mt, .my = my, .mx = mx, .off = off,
              .fc = fc, .fy = fy, .fx = fx, .o = o, .oc = oc, .oy = oy, .ox = ox,
              .C = C, .H = H, .W = W, .k = k, .G = G, .s = s, .threads = threads};
    return SUFFIX(run)(&a, 0);
}

/* The backward of one image: dX added to dx (zeroed by the caller); CARAFE's masks' gradient
   written to dk, or DLU's kernel space's gradient added to ds (contiguous, zeroed by the caller)
   and its offsets' gradient written to dof. */
int SUFFIX(reassemble_backward)(const T *x, int64_t xc, int64_t xh, int64_t xw, const T *m, int64_t mg, int64_t mt,
                                int64_t my, int64_t mx, const T *off, int64_t fc, int64_t fy, int64_t fx, const T *dy,
                                int64_t oc, int64_t oy, int64_t ox, T *dx, int64_t dc, int64_t dh, int64_t dw, T *dk,
                                int64_t kg, int64_t kt, int64_t ky, int64_t kx, T *ds, T *dof, int64_t gc, int64_t gy,
                                int64_t gx, int64_t C, int64_t H, int64_t W, int64_t k, int64_t G, int64_t s,
                                int64_t threads) {
    CALL a = {.x = x, .xc = xc, .xh = xh, .xw = xw, .m = m, .mg = mg, .mt = mt, .my = my, .mx = mx, .off = off,
              .fc = fc, .fy = fy, .fx = fx, .o = (T *)dy, .oc = oc, .oy = oy, .ox = ox, .dx = dx, .dc = dc,
              .dh = dh, .dw = dw, .dk = dk, .kg = kg, .kt = kt, .ky = ky, .kx = kx, .ds = ds, .dof = dof,
              .gc = gc, .gy = gy, .gx = gx, .C = C, .H = H, .W = W, .k = k, .G = G, .s = s, .threads = threads};
    return SUFFIX(run)(&a, 1);
}
#undef CALL
#undef V
#undef VL
#endif
