/*
 * The element-wise part of one LSTM step for one batch row and n hidden units,
 * forward and backward, in C so that the pointers can be declared `restrict`:
 * without it GCC does not vectorise these loops (too many pointers to check for
 * overlap at run time), and the gate pass then costs as much as the GEMM.
 *
 * z holds the row's gates of the n units as four runs of n: i, f, g, o
 * (pre-activations less the bias on entry to the forward, activations on exit);
 * bias has the same layout, and so has dz; the runs start gs >= n apart (the
 * first n units of each run of gs). Adding the bias here, not before the GEMMs,
 * saves a pass over the whole (T, B, 4H) gate buffer (a copy, then a
 * read-modify-write).
 *
 * Forward:  i, f, o = sigmoid(. + b), g = tanh(. + b), c = f c_prev + i g, h = o tanh(c)
 * Backward: dh = carry_h + d_out (d_out may be NULL), tc = tanh(c)
 *           dc = carry_c + dh o (1 - tc^2)
 *           dz_i = dc g i (1 - i), dz_f = dc c_prev f (1 - f), dz_g = dc i (1 - g^2),
 *           dz_o = dh tc o (1 - o);  carry_c = dc f (gradient of c_prev);  carry_h = 0
 *
 * The loops index with ptrdiff_t through one pointer per gate: Python's CFLAGS
 * carry -fwrapv, under which GCC does not vectorise int index arithmetic such
 * as z[2 * n + j].
 */
#ifndef SEQKERN_LSTM_CELL_H
#define SEQKERN_LSTM_CELL_H

#include <stddef.h>
#include "_mathfun.h"

/* One unit j of the backward; DH is the gradient reaching h_t. */
#define SK_LSTM_BWD_ONE(T, TANH, DH)                                               \
    T dh = (DH);                                                                   \
    T i = zi[j], f = zf[j], g = zg[j], o = zo[j];                                  \
    T tc = TANH(c[j]);                                                             \
    T dc = carry_c[j] + dh * o * (1 - tc * tc);                                    \
    di[j] = dc * g * i * (1 - i);                                                  \
    df[j] = dc * c_prev[j] * f * (1 - f);                                          \
    dg[j] = dc * i * (1 - g * g);                                                  \
    do_[j] = dh * tc * o * (1 - o);                                                \
    carry_c[j] = dc * f;                                                           \
    carry_h[j] = 0;

#define SK_LSTM_CELL(T, S, SIGMOID, TANH)                                          \
static inline void sk_lstm_cell_fwd_##S(T *restrict z, const T *restrict bias,     \
                                        const T *restrict c_prev,                  \
                                        T *restrict c, T *restrict h, int n,       \
                                        ptrdiff_t gs)                              \
{                                                                                  \
    T *restrict zi = z, *restrict zf = z + gs, *restrict zg = z + 2 * gs;          \
    T *restrict zo = z + 3 * gs;                                                   \
    const T *restrict bi = bias, *restrict bf = bias + gs;                         \
    const T *restrict bg = bias + 2 * gs, *restrict bo = bias + 3 * gs;            \
    for (ptrdiff_t j = 0; j < n; j++) {                                            \
        T i = SIGMOID(zi[j] + bi[j]), f = SIGMOID(zf[j] + bf[j]);                  \
        T g = TANH(zg[j] + bg[j]), o = SIGMOID(zo[j] + bo[j]);                     \
        T cj = f * c_prev[j] + i * g;                                              \
        zi[j] = i; zf[j] = f; zg[j] = g; zo[j] = o;                                \
        c[j] = cj;                                                                 \
        h[j] = o * TANH(cj);                                                       \
    }                                                                              \
}                                                                                  \
                                                                                   \
static inline void sk_lstm_cell_bwd_##S(                                           \
    const T *restrict z, const T *restrict c, const T *restrict c_prev,            \
    const T *restrict d_out, T *restrict carry_h, T *restrict carry_c,             \
    T *restrict dz, int n, ptrdiff_t gs)                                           \
{                                                                                  \
    const T *restrict zi = z, *restrict zf = z + gs, *restrict zg = z + 2 * gs;    \
    const T *restrict zo = z + 3 * gs;                                             \
    T *restrict di = dz, *restrict df = dz + gs, *restrict dg = dz + 2 * gs;       \
    T *restrict do_ = dz + 3 * gs;                                                 \
    if (d_out) {                                                                   \
        for (ptrdiff_t j = 0; j < n; j++) {                                        \
            SK_LSTM_BWD_ONE(T, TANH, carry_h[j] + d_out[j])                        \
        }                                                                          \
    } else {                                                                       \
        for (ptrdiff_t j = 0; j < n; j++) {                                        \
            SK_LSTM_BWD_ONE(T, TANH, carry_h[j])                                   \
        }                                                                          \
    }                                                                              \
}

SK_LSTM_CELL(float, f, sk_sigmoidf_fl, sk_tanhf_fl)
SK_LSTM_CELL(double, d, sk_sigmoid, sk_tanh)

#undef SK_LSTM_CELL
#undef SK_LSTM_BWD_ONE

#endif
