/*
 * Branch-free exp, tanh and sigmoid that GCC can vectorise inside a loop.
 *
 * libm's tanh is a scalar call per element and was measured to double the time
 * of an RNN step; -ffast-math is not an option (it breaks NaN/Inf). These use a
 * Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, a degree-13 Taylor
 * polynomial for expm1(r) (truncation error below 5e-18), and 2^n built in the
 * exponent bits. tanh(x) = e / (e + 2) with e = expm1(2|x|) keeps full relative
 * accuracy near 0. The float versions compute in double and round once.
 *
 * Accuracy (checked by tests/test_activations.py against NumPy over wide ranges):
 * float64 tanh and sigmoid within 4 ulp; float32 within 1 ulp.
 * NaN propagates; tanh(+-inf) = +-1, sigmoid(+inf) = 1, sigmoid(-inf) ~ 3e-308
 * in float64 and exactly 0 in float32.
 */
#ifndef SEQKERN_MATHFUN_H
#define SEQKERN_MATHFUN_H

#include <stdint.h>
#include <string.h>
#include <math.h>

/* expm1 and exp share the reduction: returns q = exp(r) - 1 and scale = 2^n, so
 * that exp(x) = scale * q + scale and expm1(x) = scale * q + (scale - 1).
 * x must already lie in [-708, 708] or be NaN. */
static inline double sk__exp_parts(double x, double *scale)
{
    const double shifter = 0x1.8p52;            /* 1.5 * 2^52 */
    const double log2e = 0x1.71547652b82fep0;
    const double ln2_hi = 0x1.62e42fee00000p-1; /* ln2 split in a head with */
    const double ln2_lo = 0x1.a39ef35793c76p-33;/* trailing zeros and a tail */
    double t = x * log2e + shifter;             /* round(x / ln2) in the low mantissa bits */
    double n = t - shifter;
    double r = (x - n * ln2_hi) - n * ln2_lo;
    uint64_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 1023u) << 52;                /* low bits of t hold 2^51 + n */
    memcpy(scale, &bits, sizeof bits);
    /* expm1(r) = r + r^2/2! + ... + r^13/13! (Horner) */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    return p * r;
}

static inline double sk_clamp_exp_arg(double x)
{
    /* written so that NaN passes through unchanged */
    x = x > 708.0 ? 708.0 : x;
    x = x < -708.0 ? -708.0 : x;
    return x;
}

static inline double sk_exp(double x)
{
    double scale;
    double q = sk__exp_parts(sk_clamp_exp_arg(x), &scale);
    return scale * q + scale;
}

static inline double sk_tanh(double x)
{
    double ax = fabs(x);
    double scale;
    ax = ax > 20.0 ? 20.0 : ax;                 /* tanh(20) rounds to 1 */
    double q = sk__exp_parts(2.0 * ax, &scale);
    double e = scale * q + (scale - 1.0);       /* expm1(2|x|) */
    return copysign(e / (e + 2.0), x);
}

/* 1 / (1 + e) for x >= 0 and e / (1 + e) below, e = exp(-|x|): never overflows,
 * keeps full relative accuracy for very negative x, and its one-sided clamp of
 * |x| vectorises in loops over float and double alike (a two-sided clamp of x
 * did not: "control flow in loop" in GCC 12). NaN propagates. */
static inline double sk_sigmoid(double x)
{
    double ax = fabs(x);
    double scale;
    ax = ax > 708.0 ? 708.0 : ax;
    double q = sk__exp_parts(-ax, &scale);
    double e = scale * q + scale;               /* exp(-|x|) */
    double p = 1.0 / (1.0 + e);
    return x >= 0 ? p : e * p;
}

static inline float sk_tanhf(float x) { return (float)sk_tanh((double)x); }
static inline float sk_sigmoidf(float x) { return (float)sk_sigmoid((double)x); }

/*
 * exp in float arithmetic throughout (for the attention softmax, where the
 * double-based route above would halve the vector width). Same Cody-Waite
 * reduction, x = n*ln2 + r with |r| <= ln2/2, then a degree-7 Taylor polynomial
 * for exp(r) (truncation error below 6e-9) and 2^n built in the exponent bits.
 *
 * Accuracy: within 2 ulp of the correctly rounded exp(x) for x in [-87.33, 88]
 * (checked by tests/test_attention.py against NumPy in float64).
 * Range: x < -87.3365 (where exp(x) < FLT_MIN) gives exactly 0, so exp(-inf) = 0;
 * x > 88 is computed as exp(88) ~ 1.65e38 (the softmax only feeds it x <= 0).
 * NaN propagates.
 */
static inline float sk_expf(float x)
{
    const float shifter = 0x1.8p23f;             /* 1.5 * 2^23 */
    const float log2e = 0x1.715476p0f;
    const float ln2_hi = 0x1.62e4p-1f;           /* ln2 = ln2_hi + ln2_lo, ln2_hi exact in 16 bits */
    const float ln2_lo = 0x1.7f7d1cp-20f;
    const float lo = -87.3365478515625f, hi = 88.0f;
    /* written so that NaN passes through unchanged */
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    float t = xc * log2e + shifter;              /* round(x / ln2) in the low mantissa bits */
    float n = t - shifter;
    float r = (xc - n * ln2_hi) - n * ln2_lo;
    uint32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 127u) << 23;                  /* low bits of t hold 2^22 + n, n in [-126, 127] */
    float scale;
    memcpy(&scale, &bits, sizeof bits);
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    float e = p * scale;
    return x < lo ? 0.0f : e;
}

/*
 * tanh and sigmoid in float arithmetic throughout, for the float LSTM gate pass.
 * sk_tanhf / sk_sigmoidf above compute in double and round once (1 ulp), but a
 * loop over float then runs at half the vector width plus conversions: the gate
 * pass was ~17% of the float32 LSTM forward's time steps at (B,T,I,H) =
 * (32,100,256,256). These use sk_expf's reduction with a degree-8 Taylor
 * polynomial for expm1(r) (truncation below 2e-9 relative), so that
 * expm1(x) = scale q + (scale - 1) keeps full relative accuracy near 0.
 *
 * Accuracy (tests/test_activations.py, against NumPy in long double, over the
 * same wide ranges as the double versions): tanh within 2 ulp, sigmoid within
 * 3 ulp (see MAX_ULP_FLOAT_NATIVE there; the measured maxima are noted beside it).
 * NaN propagates; tanh(+-inf) = +-1, tanh(-0) = -0, sigmoid(+inf) = 1, and
 * sigmoid(x) = 0 below -87.34 (where the true value is subnormal).
 */
static inline float sk__expf_parts(float x, float *scale)
{
    /* x in [-87.33, 88] or NaN: returns q = exp(r) - 1, scale = 2^n, x = n ln2 + r */
    const float shifter = 0x1.8p23f;
    const float log2e = 0x1.715476p0f;
    const float ln2_hi = 0x1.62e4p-1f;
    const float ln2_lo = 0x1.7f7d1cp-20f;
    float t = x * log2e + shifter;
    float n = t - shifter;
    float r = (x - n * ln2_hi) - n * ln2_lo;
    uint32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 127u) << 23;
    memcpy(scale, &bits, sizeof bits);
    /* expm1(r) = r (1 + r/2! + ... + r^7/8!) (Horner) */
    float p = 1.0f / 40320.0f;
    p = p * r + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r;
}

static inline float sk_tanhf_fl(float x)
{
    float ax = fabsf(x);
    float scale;
    ax = ax > 10.0f ? 10.0f : ax;               /* tanh(10) rounds to 1 in float */
    float q = sk__expf_parts(2.0f * ax, &scale);
    float e = scale * q + (scale - 1.0f);       /* expm1(2|x|) */
    return copysignf(e / (e + 2.0f), x);
}

static inline float sk_sigmoidf_fl(float x)
{
    /* as sk_sigmoid: 1 / (1 + e) for x >= 0, e / (1 + e) below, e = exp(-|x|) */
    float ax = fabsf(x);
    float scale;
    const float lim = 87.3365478515625f;        /* exp(-lim) ~ FLT_MIN */
    ax = ax > lim ? lim : ax;
    float q = sk__expf_parts(-ax, &scale);
    float e = scale * q + scale;                /* exp(-|x|) */
    e = fabsf(x) > lim ? 0.0f : e;              /* flush where exp(-|x|) is subnormal */
    float p = 1.0f / (1.0f + e);
    return x >= 0 ? p : e * p;
}

/* exp for double with the same flush: exactly 0 below -708 (so exp(-inf) = 0),
 * otherwise sk_exp (within 2 ulp). NaN propagates. */
static inline double sk_exp_flush(double x)
{
    double e = sk_exp(x);
    return x < -708.0 ? 0.0 : e;
}

#endif
