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
 * float64 tanh and sigmoid within 4 ulp; float32 within 1 ulp; where sigmoid(x)
 * is subnormal (x in [-745.2, -708.4]) within 1 ulp of the subnormals' spacing.
 * Exact at the limits: NaN propagates; tanh(+-inf) = +-1, sigmoid(+inf) = 1,
 * sigmoid(-inf) = 0, and each is exactly 0, 1 or +-1 wherever the true value
 * rounds to it (so a saturated gate's derivative s (1 - s) is exactly 0).
 */
#ifndef SEQKERN_MATHFUN_H
#define SEQKERN_MATHFUN_H

#include <stdint.h>
#include <string.h>
#include <math.h>

/* expm1 and exp share the reduction: returns q = exp(r) - 1 and scale = 2^(n + k),
 * so that exp(x) 2^k = scale * q + scale and, for k = 0, expm1(x) = scale * q +
 * (scale - 1). A bias k > 0 keeps scale normal where 2^n is not: x must lie in
 * [-708 - k ln2, 708] or be NaN. */
static inline double sk__exp_parts(double x, double *scale, unsigned k)
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
    bits = (bits + 1023u + k) << 52;            /* low bits of t hold 2^51 + n */
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

/* c ? a : b with both arms computed: after inlining, the loops below hold a
 * select between two values, which GCC vectorises at every level (a blend, or
 * and/andnot/or at SSE2) where it may assume that floating-point operations do
 * not trap: setup.py compiles with -fno-trapping-math (Clang's default; it
 * changes no value, NaN and Inf included). A select through 64-bit integer
 * masks would not vectorise at SSE2, which cannot turn a compare of doubles
 * into such a mask in a vector. */
static inline double sk__select(int c, double a, double b) { return c ? a : b; }
static inline float sk__selectf(int c, float a, float b) { return c ? a : b; }

static inline double sk_clamp_exp_arg(double x)
{
    /* written so that NaN passes through unchanged */
    x = sk__select(x > 708.0, 708.0, x);
    x = sk__select(x < -708.0, -708.0, x);
    return x;
}

static inline double sk_exp(double x)
{
    double scale;
    double q = sk__exp_parts(sk_clamp_exp_arg(x), &scale, 0);
    return scale * q + scale;
}

static inline double sk_tanh(double x)
{
    double ax = fabs(x);
    double scale;
    ax = sk__select(ax > 20.0, 20.0, ax);       /* tanh(20) rounds to 1 */
    double q = sk__exp_parts(2.0 * ax, &scale, 0);
    double e = scale * q + (scale - 1.0);       /* expm1(2|x|) */
    return copysign(e / (e + 2.0), x);
}

/* 1 / (1 + e) for x >= 0 and e / (1 + e) below, e = exp(-|x|): never overflows,
 * keeps full relative accuracy for very negative x, and its one-sided clamp of
 * |x| vectorises in loops over float and double alike (a two-sided clamp of x
 * did not: "control flow in loop" in GCC 12). NaN propagates.
 * e is built as (2^(n+64) (1 + q)) 2^-64: exact scaling where e is normal, and
 * one rounding where it is subnormal (|x| > 708.4); exp(-746) rounds to 0, so
 * the clamp at 746 gives sigmoid(x) = 0 exactly below -745.2, -inf included. */
static inline double sk_sigmoid(double x)
{
    double ax = fabs(x);
    double scale;
    ax = sk__select(ax > 746.0, 746.0, ax);
    double q = sk__exp_parts(-ax, &scale, 64);
    double e = (scale * q + scale) * 0x1p-64;   /* exp(-|x|) */
    double p = 1.0 / (1.0 + e);
    return sk__select(x >= 0, p, e * p);
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
    float xc = sk__selectf(x > hi, hi, x);
    xc = sk__selectf(xc < lo, lo, xc);
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
    return sk__selectf(x < lo, 0.0f, e);
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
 * 3 ulp (see MAX_ULP_FLOAT_NATIVE there; the measured maxima are noted beside it),
 * and within 1 ulp of the subnormals' spacing where sigmoid is subnormal.
 * NaN propagates; tanh(+-inf) = +-1, tanh(-0) = -0, sigmoid(+inf) = 1,
 * sigmoid(-inf) = 0, exactly 0, 1 or +-1 wherever the true value rounds to it.
 */
static inline float sk__expf_parts(float x, float *scale, unsigned k)
{
    /* x in [-87.33 - k ln2, 88] or NaN: returns q = exp(r) - 1 and
     * scale = 2^(n + k), x = n ln2 + r (k > 0 keeps scale normal; see sk__exp_parts) */
    const float shifter = 0x1.8p23f;
    const float log2e = 0x1.715476p0f;
    const float ln2_hi = 0x1.62e4p-1f;
    const float ln2_lo = 0x1.7f7d1cp-20f;
    float t = x * log2e + shifter;
    float n = t - shifter;
    float r = (x - n * ln2_hi) - n * ln2_lo;
    uint32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 127u + k) << 23;
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
    ax = sk__selectf(ax > 10.0f, 10.0f, ax);    /* tanh(10) rounds to 1 in float */
    float q = sk__expf_parts(2.0f * ax, &scale, 0);
    float e = scale * q + (scale - 1.0f);       /* expm1(2|x|) */
    return copysignf(e / (e + 2.0f), x);
}

static inline float sk_sigmoidf_fl(float x)
{
    /* as sk_sigmoid: 1 / (1 + e) for x >= 0, e / (1 + e) below, e = exp(-|x|),
     * built as (2^(n+32) (1 + q)) 2^-32 (one rounding where it is subnormal);
     * exp(-104) rounds to 0, so sigmoid(x) = 0 exactly below -103.98 */
    float ax = fabsf(x);
    float scale;
    ax = sk__selectf(ax > 104.0f, 104.0f, ax);
    float q = sk__expf_parts(-ax, &scale, 32);
    float e = (scale * q + scale) * 0x1p-32f;   /* exp(-|x|) */
    float p = 1.0f / (1.0f + e);
    return sk__selectf(x >= 0, p, e * p);
}

/* exp for double with the same flush: exactly 0 below -708 (so exp(-inf) = 0),
 * otherwise sk_exp (within 2 ulp). NaN propagates. */
static inline double sk_exp_flush(double x)
{
    double e = sk_exp(x);
    return sk__select(x < -708.0, 0.0, e);
}

#endif
