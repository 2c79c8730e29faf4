/* Storage types of fastnorm's kernels: how each is read, computed in and
 * written, and the vector types the loops use.
 *
 * A kernel reads its data in the storage type S, computes in S's compute
 * type T and double, and rounds each output element once to S.  T is
 * float for float32 (and for 16-bit storage: float32 arithmetic) and double
 * for float64.  Per-element coefficients and weights are in T, per-call
 * statistics and sums in double.
 *
 * FN_STORAGE_TYPES is the one list of storage types on the C side: every
 * family of loops is instantiated from it (FN_STORAGE_TYPES(FN_INST_..., _)),
 * and FN_PICK(name, p) chooses name_<suffix> from the type of the pointer p
 * (C11 _Generic), so the Cython kernels, written once over their fused
 * storage type, call fn_<op>(p, ...) and get the right loop.  A storage type
 * is one more line here, its scalar and vector conversions below, and its
 * entry in the Cython fused type (_kernels.pyx) and in fastnorm/_dtypes.py.
 *
 * None of these functions allocates, checks its arguments or touches Python.
 * Output pointers may alias input pointers exactly (in-place use); they are
 * therefore not declared restrict.
 */
#ifndef FASTNORM_STORAGE_H
#define FASTNORM_STORAGE_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

/* The 16-bit storage types are their bits: bfloat16 (ml_dtypes.bfloat16)
 * as uint16_t, IEEE half (numpy.float16) as int16_t, a signed type only so
 * that the two are distinct C types (_Generic, Cython's fused dispatch on
 * the buffer formats 'H' and 'h'). */
typedef uint16_t fn_bf16;
typedef int16_t fn_f16;

/* X(a, S, SUF, T): storage type S, its name suffix, its compute type */
#define FN_STORAGE_TYPES(X, a)   \
    X(a, float, f32, float)      \
    X(a, double, f64, double)    \
    X(a, fn_bf16, bf16, float)   \
    X(a, fn_f16, f16, float)

/* the suffixes, for introspection (kernels.storage_types()) */
#define FN_STORAGE_NAME(a, S, SUF, T) #SUF " "
#define FN_STORAGE_NAMES FN_STORAGE_TYPES(FN_STORAGE_NAME, _)

#define FN_ASSOC(NAME, S, SUF, T) , const S *: NAME##_##SUF, S *: NAME##_##SUF
#define FN_PICK(NAME, p) _Generic((p) FN_STORAGE_TYPES(FN_ASSOC, NAME))

/* Reductions use explicit vectors (GCC/Clang vector extensions): each
 * accumulator is a vector of 4 doubles, lowered to whatever SIMD the build
 * targets (two SSE2 registers on baseline x86-64).  The lanes are combined in
 * a fixed order at the end, and the build disables floating-point contraction
 * (-ffp-contract=off), so a result depends only on the data and the run
 * length: not on threads, alignment or the instruction set. */
typedef double fn_v4d __attribute__((vector_size(32)));
typedef float fn_v4f __attribute__((vector_size(16)));
typedef float fn_v8f __attribute__((vector_size(32)));

static inline double fn_hsum(fn_v4d v)
{
    return (v[0] + v[2]) + (v[1] + v[3]);
}

/* the two halves of 8 floats as 4 doubles each (exact).  With AVX, one
 * VCVTPS2PD per half: GCC 12 lowers the generic form below through two
 * 2-lane conversions and a store and reload of the upper pair (a
 * store-forwarding round trip on every flush of the statistics loops). */
static inline void fn_widen8d(fn_v8f v, fn_v4d *lo, fn_v4d *hi)
{
#if defined(__AVX__)
    __m256 m = (__m256)v;
    *lo = (fn_v4d)_mm256_cvtps_pd(_mm256_castps256_ps128(m));
    *hi = (fn_v4d)_mm256_cvtps_pd(_mm256_extractf128_ps(m, 1));
#else
    fn_v4f l = {v[0], v[1], v[2], v[3]}, h = {v[4], v[5], v[6], v[7]};
    *lo = __builtin_convertvector(l, fn_v4d);
    *hi = __builtin_convertvector(h, fn_v4d);
#endif
}

static inline double fn_hsum8(fn_v8f v)
{
    /* fixed order, in float64: ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)),
     * the first level as one vector addition */
    fn_v4d l, h;
    fn_widen8d(v, &l, &h);
    return fn_hsum(l + h);
}

/* Two 4-double accumulators side by side as one vector of 8, [lo | hi]: the
 * same lanes and the same additions (one 512-bit register in the AVX-512
 * copy, so 8 floats widen with one conversion instead of two and a shuffle). */
typedef double fn_v8d __attribute__((vector_size(64)));
#if __has_builtin(__builtin_shufflevector)
/* shuffles, not lane-by-lane constructors (which GCC 12 builds through
 * memory where a vector spans two registers) */
static inline fn_v8d fn_cat8d(fn_v4d lo, fn_v4d hi)
{
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}
static inline fn_v4d fn_lo8d(fn_v8d v) { return __builtin_shufflevector(v, v, 0, 1, 2, 3); }
static inline fn_v4d fn_hi8d(fn_v8d v) { return __builtin_shufflevector(v, v, 4, 5, 6, 7); }
#else
static inline fn_v8d fn_cat8d(fn_v4d lo, fn_v4d hi)
{
    return (fn_v8d){lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]};
}
static inline fn_v4d fn_lo8d(fn_v8d v) { return (fn_v4d){v[0], v[1], v[2], v[3]}; }
static inline fn_v4d fn_hi8d(fn_v8d v) { return (fn_v4d){v[4], v[5], v[6], v[7]}; }
#endif
static inline fn_v8d fn_cvt8d(fn_v8f v)
{
#if defined(__AVX512F__)
    return (fn_v8d)_mm512_cvtps_pd((__m256)v);    /* GCC 12: two halves otherwise */
#else
    return __builtin_convertvector(v, fn_v8d);
#endif
}

static inline void fn_flush8(fn_v8f v, fn_v4d *lo, fn_v4d *hi)
{
    fn_v4d l, h;
    fn_widen8d(v, &l, &h);
    *lo += l;
    *hi += h;
}

/* Compute-type loads: 4 values as 4 doubles, 8 floats as a float vector. */
static inline fn_v4d fn_load4_float(const float *p)
{
    fn_v4f v;
    __builtin_memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, fn_v4d);
}

static inline fn_v4d fn_load4_double(const double *p)
{
    fn_v4d v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline fn_v8f fn_load8_float(const float *p)
{
    fn_v8f v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

/* Per storage type SUF:
 *   fn_ld_SUF(v)      one stored value in the compute type (exact)
 *   fn_st_SUF(v)      a compute-type value rounded to storage
 *   fn_std_SUF(v)     a double rounded to storage, once
 *   fn_ld4d_SUF(p)    4 stored values as 4 doubles (exact)
 *   fn_ld8f_SUF(p)    8 stored values as a float vector (float compute only) */
static inline float fn_ld_f32(float v) { return v; }
static inline float fn_st_f32(float v) { return v; }
static inline float fn_std_f32(double v) { return (float)v; }
static inline fn_v4d fn_ld4d_f32(const float *p) { return fn_load4_float(p); }
static inline fn_v8f fn_ld8f_f32(const float *p) { return fn_load8_float(p); }

static inline void fn_st8f_f32(float *p, fn_v8f v) { __builtin_memcpy(p, &v, sizeof v); }

static inline double fn_ld_f64(double v) { return v; }
static inline double fn_st_f64(double v) { return v; }
static inline double fn_std_f64(double v) { return v; }
static inline fn_v4d fn_ld4d_f64(const double *p) { return fn_load4_double(p); }

/* --- 16-bit storage: float32 arithmetic, one rounding on store ----------
 * Every conversion is exact on load and rounds to nearest even on store,
 * with integer operations (and, for the half subnormals, one float32
 * addition that rounds exactly as wanted), so that the baseline copy and
 * the AVX2 copy, which uses F16C for float16, give the same bits.  NaNs
 * stay NaN (quieted); their sign and payload are unspecified.  Nothing
 * depends on the FTZ/DAZ modes: no subnormal float32 is ever an operand. */

static inline float fn_bits_f(uint32_t u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
static inline uint32_t fn_f_bits(float f) { uint32_t u; __builtin_memcpy(&u, &f, 4); return u; }

/* a double rounded to float32 by round-to-odd: truncation, with the last bit
 * set when inexact; rounding that to a 16-bit type (RNE) is then the one
 * correct rounding of the double (24 bits keep 2 more than either needs) */
static inline float fn_d2f_odd(double d)
{
    float f = (float)d;
    if (__builtin_isnan(d) || (double)f == d)
        return f;
    uint32_t u = fn_f_bits(f);
    if (__builtin_fabs((double)f) > __builtin_fabs(d))
        u -= 1;                         /* rounded away from zero: step back */
    return fn_bits_f(u | 1u);
}

/* bfloat16: the high half of a float32 */
static inline float fn_ld_bf16(fn_bf16 v) { return fn_bits_f((uint32_t)v << 16); }
static inline fn_bf16 fn_st_bf16(float f)
{
    uint32_t u = fn_f_bits(f);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (fn_bf16)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
}
static inline fn_bf16 fn_std_bf16(double v) { return fn_st_bf16(fn_d2f_odd(v)); }
/* Vector conversions, 8 values at a time.  The AVX2 copy works on 256-bit
 * registers (and F16C for float16); other builds on two halves of 4 lanes in
 * 128-bit generic vectors, which SSE2 (and NEON) have natively: wider
 * generic integer vectors would be expanded lane by lane there.  Every path
 * computes the scalar conversions' results exactly. */
typedef int32_t fn_v4i32 __attribute__((vector_size(16)));
typedef uint32_t fn_v4u32 __attribute__((vector_size(16)));

/* bfloat16 store, 4 lanes: RNE on the integer, NaN quieted */
static inline fn_v4i32 fn_bf16_round4(fn_v4f v)
{
    fn_v4i32 u;
    __builtin_memcpy(&u, &v, sizeof u);
    fn_v4u32 uu = (fn_v4u32)u;
    fn_v4i32 r = (fn_v4i32)((uu + 0x7fffu + ((uu >> 16) & 1u)) >> 16);
    fn_v4i32 q = (fn_v4i32)((uu >> 16) | 0x40u);
    fn_v4i32 nan = (u & 0x7fffffff) > 0x7f800000;       /* both sides positive */
    return (nan & q) | (~nan & r);
}

/* float16 load, 4 lanes of 16-bit values in 32-bit lanes: exact */
static inline fn_v4f fn_f16_widen4(fn_v4i32 h)
{
    fn_v4i32 em = h & 0x7fff, sign = (h & 0x8000) << 16;
    fn_v4i32 infnan = 0x7f800000 | ((em & 0x3ff) << 13);
    fn_v4i32 normal = (em << 13) + 0x38000000;
    fn_v4f sf = __builtin_convertvector(em, fn_v4f) * 0x1p-24f;
    fn_v4i32 sub;
    __builtin_memcpy(&sub, &sf, sizeof sub);
    fn_v4i32 is_inf = em >= 0x7c00, is_norm = em >= 0x0400;
    fn_v4i32 u = (is_inf & infnan) | (~is_inf & ((is_norm & normal) | (~is_norm & sub)));
    u |= sign;
    fn_v4f f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
}

/* float16 store, 4 lanes: RNE (integer for normals, one float addition for
 * subnormals), inf past 65504, NaN quieted */
static inline fn_v4i32 fn_f16_round4(fn_v4f v)
{
    fn_v4i32 u;
    __builtin_memcpy(&u, &v, sizeof u);
    fn_v4i32 sign = (fn_v4i32)(((fn_v4u32)u >> 16) & 0x8000u), a = u & 0x7fffffff;
    fn_v4i32 nan = a > 0x7f800000;
    fn_v4i32 infnan = (nan & (0x7e00 | ((a >> 13) & 0x3ff))) | (~nan & 0x7c00);
    fn_v4f af, half = {0.5f, 0.5f, 0.5f, 0.5f};
    __builtin_memcpy(&af, &a, sizeof af);
    af = af + half;
    fn_v4i32 sub;
    __builtin_memcpy(&sub, &af, sizeof sub);
    sub -= 0x3f000000;
    fn_v4u32 au = (fn_v4u32)a;
    fn_v4i32 normal = (fn_v4i32)((au + 0xc8000fffu + ((au >> 13) & 1u)) >> 13);
    fn_v4i32 big = a >= 0x47800000, small = a < 0x38800000;
    fn_v4i32 h = (big & infnan) | (~big & ((small & sub) | (~small & normal)));
    return h | sign;
}

/* 8 16-bit values into two halves of 4 32-bit lanes (zero-extended), and
 * back (each value below 2^16) */
static inline void fn_widen8(const uint16_t *p, fn_v4i32 *lo, fn_v4i32 *hi)
{
#if defined(__SSE2__)
    __m128i h = _mm_loadu_si128((const __m128i *)p), z = _mm_setzero_si128();
    __m128i l = _mm_unpacklo_epi16(h, z), u = _mm_unpackhi_epi16(h, z);
    __builtin_memcpy(lo, &l, 16);
    __builtin_memcpy(hi, &u, 16);
#else
    fn_v4i32 l = {p[0], p[1], p[2], p[3]}, u = {p[4], p[5], p[6], p[7]};
    *lo = l;
    *hi = u;
#endif
}

static inline void fn_narrow8(uint16_t *p, fn_v4i32 lo, fn_v4i32 hi)
{
#if defined(__SSE2__)
    /* no unsigned 32 -> 16 pack before SSE4.1: bias to signed and back */
    __m128i l, u, bias = _mm_set1_epi32(0x8000);
    __builtin_memcpy(&l, &lo, 16);
    __builtin_memcpy(&u, &hi, 16);
    __m128i k = _mm_packs_epi32(_mm_sub_epi32(l, bias), _mm_sub_epi32(u, bias));
    _mm_storeu_si128((__m128i *)p, _mm_xor_si128(k, _mm_set1_epi16((short)0x8000)));
#else
    for (int j = 0; j < 4; j++) {
        p[j] = (uint16_t)lo[j];
        p[j + 4] = (uint16_t)hi[j];
    }
#endif
}

/* halves of a vector and back, in registers (through memory, a wide load of
 * two narrow stores stalls store forwarding: ~15 cycles a vector) */
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define FN_HAS_SHUFFLE 1
#endif
#endif
static inline void fn_split8(fn_v8f v, fn_v4f *lo, fn_v4f *hi)
{
#ifdef FN_HAS_SHUFFLE
    *lo = __builtin_shufflevector(v, v, 0, 1, 2, 3);
    *hi = __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
    __builtin_memcpy(lo, &v, 16);
    __builtin_memcpy(hi, (const char *)&v + 16, 16);
#endif
}

static inline fn_v8f fn_join8(fn_v4f lo, fn_v4f hi)
{
#ifdef FN_HAS_SHUFFLE
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
#else
    fn_v8f v;
    __builtin_memcpy(&v, &lo, 16);
    __builtin_memcpy((char *)&v + 16, &hi, 16);
    return v;
#endif
}

static inline fn_v8f fn_ld8f_bf16(const fn_bf16 *p)
{
#if defined(__AVX2__)
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return (fn_v8f)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
    fn_v4i32 lo, hi;
    fn_widen8(p, &lo, &hi);
    lo <<= 16;
    hi <<= 16;
    fn_v4f a, b;
    __builtin_memcpy(&a, &lo, 16);
    __builtin_memcpy(&b, &hi, 16);
    return fn_join8(a, b);
#endif
}

static inline void fn_st8f_bf16(fn_bf16 *p, fn_v8f v)
{
#if defined(__AVX2__)
    __m256i u = _mm256_castps_si256((__m256)v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                                                   lsb), 16);
    __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                     _mm256_set1_epi32(0x7f800000));
    __m256i k = _mm256_blendv_epi8(r, q, nan);
    k = _mm256_permute4x64_epi64(_mm256_packus_epi32(k, k), 0xD8);
    _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(k));
#else
    fn_v4f a, b;
    fn_split8(v, &a, &b);
    fn_narrow8(p, fn_bf16_round4(a), fn_bf16_round4(b));
#endif
}

static inline fn_v4d fn_ld4d_bf16(const fn_bf16 *p)
{
    fn_v4d d = {fn_ld_bf16(p[0]), fn_ld_bf16(p[1]), fn_ld_bf16(p[2]), fn_ld_bf16(p[3])};
    return d;
}

/* IEEE half (float16); F16C in a build that has it (the AVX2 copy) */
#if defined(__F16C__)
static inline float fn_ld_f16(fn_f16 v) { return _cvtsh_ss((unsigned short)v); }
static inline fn_f16 fn_st_f16(float f) { return (fn_f16)_cvtss_sh(f, 0); }
static inline fn_v8f fn_ld8f_f16(const fn_f16 *p)
{
    return (fn_v8f)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline void fn_st8f_f16(fn_f16 *p, fn_v8f v)
{
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph((__m256)v, 0));
}
#else
static inline float fn_ld_f16(fn_f16 v)
{
    fn_v4i32 h = {(uint16_t)v, 0, 0, 0};
    return fn_f16_widen4(h)[0];
}
static inline fn_f16 fn_st_f16(float f)
{
    fn_v4f v = {f, 0.0f, 0.0f, 0.0f};
    return (fn_f16)fn_f16_round4(v)[0];
}
static inline fn_v8f fn_ld8f_f16(const fn_f16 *p)
{
    fn_v4i32 lo, hi;
    fn_widen8((const uint16_t *)p, &lo, &hi);
    return fn_join8(fn_f16_widen4(lo), fn_f16_widen4(hi));
}
static inline void fn_st8f_f16(fn_f16 *p, fn_v8f v)
{
    fn_v4f a, b;
    fn_split8(v, &a, &b);
    fn_narrow8((uint16_t *)p, fn_f16_round4(a), fn_f16_round4(b));
}
#endif
static inline fn_f16 fn_std_f16(double v) { return fn_st_f16(fn_d2f_odd(v)); }
static inline fn_v4d fn_ld4d_f16(const fn_f16 *p)
{
    fn_v4d d = {fn_ld_f16(p[0]), fn_ld_f16(p[1]), fn_ld_f16(p[2]), fn_ld_f16(p[3])};
    return d;
}

/* Rows of doubles rounded once to storage, n values: fn_std_row(src, dst,
 * n) = dst[i] = fn_std_SUF(src[i]) for all i, 8 at a time, so that the
 * loops that compute in double (LocalResponseNorm) write 16-bit rows at
 * vector speed.  Round-to-odd on float64 lanes without leaving them: below
 * the float32 rounding position (the low 29 bits of the significand) the
 * bits are cleared and their OR kept in the last float32 bit; the result
 * then converts to float32 exactly.  Valid for the normal float32 range and
 * beyond (an overflow becomes inf, as the 16-bit rounding of the scalar
 * result would); NaN lanes are converted as they are; 8 values with one
 * below 2^-126 (a float32 subnormal) take the scalar path. */
typedef int64_t fn_v4i64 __attribute__((vector_size(32)));
typedef int32_t fn_v8i32 __attribute__((vector_size(32)));
/* |d| lane by lane (the sign bit cleared) */
static inline fn_v4d fn_abs4d(fn_v4d d)
{
    fn_v4i64 u, mag = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX};
    __builtin_memcpy(&u, &d, sizeof u);
    u &= mag;
    __builtin_memcpy(&d, &u, sizeof d);
    return d;
}
/* lanes with 0 < |d| < 2^-126 (a float32 subnormal or below), as a mask
 * (float compares: SSE2 has no 64-bit integer ones) */
static inline fn_v4i64 fn_tiny4(fn_v4d d)
{
    fn_v4d a = fn_abs4d(d), z = {0.0, 0.0, 0.0, 0.0};
    fn_v4d m = {0x1p-126, 0x1p-126, 0x1p-126, 0x1p-126};
    return (a < m) & (a != z);
}
static inline int fn_any4(fn_v4i64 m)
{
#if defined(__AVX__)
    __m256d v;
    __builtin_memcpy(&v, &m, sizeof v);
    return _mm256_movemask_pd(v);
#elif defined(__SSE2__)
    __m128d lo, hi;
    __builtin_memcpy(&lo, &m, 16);
    __builtin_memcpy(&hi, (const char *)&m + 16, 16);
    return _mm_movemask_pd(_mm_or_pd(lo, hi));
#else
    return (m[0] | m[1] | m[2] | m[3]) != 0;
#endif
}
/* round-to-odd of 4 doubles, none tiny: the low 29 significand bits sit in
 * the low 32-bit half of each lane, so the sticky bit is a 32-bit compare */
static inline fn_v4f fn_d2f_odd4(fn_v4d d)
{
    const int32_t low = (1 << 29) - 1, one = 1 << 29;
    const fn_v8i32 lm = {low, 0, low, 0, low, 0, low, 0};
    const fn_v8i32 sb = {one, 0, one, 0, one, 0, one, 0};
    fn_v8i32 w, nan;
    fn_v4i64 nan64 = d != d;
    __builtin_memcpy(&w, &d, sizeof w);
    __builtin_memcpy(&nan, &nan64, sizeof nan);
    fn_v8i32 t = (w & ~lm) | (((w & lm) != 0) & sb);
    t = (nan & w) | (~nan & t);
    fn_v4d r;
    __builtin_memcpy(&r, &t, sizeof r);
    return __builtin_convertvector(r, fn_v4f);
}

static inline void fn_std_row_f32(const double *src, float *dst, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] = (float)src[i];
}
static inline void fn_std_row_f64(const double *src, double *dst, int64_t n)
{
    if (dst != src) memmove(dst, src, (size_t)n * sizeof(double));
}
#if defined(__AVX__)
#define FN_WIDE_D2F 1
#else
#define FN_WIDE_D2F 0
#endif
#define FN_STD_ROW16(S, SUF)                                                  \
static inline void fn_std_row_##SUF(const double *src, S *dst, int64_t n)     \
{                                                                             \
    int64_t i = 0;                                                            \
    /* (in 128-bit registers the 4-lane double vectors spill: scalar there) */\
    if (FN_WIDE_D2F)                                                          \
    for (; i + 8 <= n; i += 8) {                                              \
        fn_v4d a, b;                                                          \
        __builtin_memcpy(&a, src + i, sizeof a);                              \
        __builtin_memcpy(&b, src + i + 4, sizeof b);                          \
        if (__builtin_expect(!fn_any4(fn_tiny4(a) | fn_tiny4(b)), 1))         \
            fn_st8f_##SUF(dst + i, fn_join8(fn_d2f_odd4(a), fn_d2f_odd4(b))); \
        else                                                                  \
            for (int j = 0; j < 8; j++) dst[i + j] = fn_std_##SUF(src[i + j]);\
    }                                                                         \
    for (; i < n; i++) dst[i] = fn_std_##SUF(src[i]);                         \
}
FN_STD_ROW16(fn_bf16, bf16)
FN_STD_ROW16(fn_f16, f16)
#define fn_std_row(src, dst, n) FN_PICK(fn_std_row, dst)(src, dst, n)

/* Rows of stored values as doubles (exact), n values: fn_ld_row(src, dst, n) */
static inline void fn_ld_row_f32(const float *src, double *dst, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] = (double)src[i];
}
static inline void fn_ld_row_f64(const double *src, double *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(double));
}
#define FN_LD_ROW16(S, SUF)                                                   \
static inline void fn_ld_row_##SUF(const S *src, double *dst, int64_t n)      \
{                                                                             \
    int64_t i = 0;                                                            \
    for (; i + 8 <= n; i += 8) {                                              \
        fn_v4f a, b;                                                          \
        fn_split8(fn_ld8f_##SUF(src + i), &a, &b);                            \
        fn_v4d da = __builtin_convertvector(a, fn_v4d);                       \
        fn_v4d db = __builtin_convertvector(b, fn_v4d);                       \
        __builtin_memcpy(dst + i, &da, sizeof da);                            \
        __builtin_memcpy(dst + i + 4, &db, sizeof db);                        \
    }                                                                         \
    for (; i < n; i++) dst[i] = (double)fn_ld_##SUF(src[i]);                  \
}
FN_LD_ROW16(fn_bf16, bf16)
FN_LD_ROW16(fn_f16, f16)

/* --- the loops' vector -----------------------------------------------
 * Float-compute loops step over fn_vf, FN_VL float lanes: 16 (one 512-bit
 * register) in the AVX-512 copy, 8 elsewhere (one AVX register in the AVX2
 * copy, two SSE registers in the baseline copy).  Elementwise loops do the
 * same per-element arithmetic at any width.  Reductions keep the 8-lane
 * accumulators of their design (four over a step of 32 values, two over a
 * step of 16); at FN_VL = 16 one register holds two of them side by side,
 * [a0 | a1], and fn_fold32 / fn_fold16 combine them in the one fixed order
 * ((a0 + a1) + (a2 + a3)), so no sum depends on the width.
 *   fn_ldv_SUF(p), fn_stv_SUF(p, v)   FN_VL stored values in, rounded out
 *   fn_vsplat(c), fn_vload(p)         c in every lane; FN_VL floats
 *   fn_fold32(a), fn_fold16(a)        32 (16) lanes in a[] to 8 */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define FN_VL 16
typedef float fn_vf __attribute__((vector_size(64)));
#else
#define FN_VL 8
typedef fn_v8f fn_vf;
#endif
#define FN_N32 (32 / FN_VL)
#define FN_N16 (16 / FN_VL)

static inline fn_vf fn_vsplat(float c)
{
    /* an initializer, one broadcast (GCC 12 compiles a loop over the lanes
     * to one masked broadcast per lane) */
#if FN_VL == 16
    return (fn_vf){c, c, c, c, c, c, c, c, c, c, c, c, c, c, c, c};
#else
    return (fn_vf){c, c, c, c, c, c, c, c};
#endif
}
static inline fn_vf fn_vload(const float *p)
{
    fn_vf v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

#if FN_VL == 16
static inline fn_v8f fn_vlo(fn_vf v) { return (fn_v8f)_mm512_castps512_ps256((__m512)v); }
static inline fn_v8f fn_vhi(fn_vf v)
{
    return (fn_v8f)_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)v), 1));
}
static inline fn_v8f fn_fold32(const fn_vf *a)
{
    return (fn_vlo(a[0]) + fn_vhi(a[0])) + (fn_vlo(a[1]) + fn_vhi(a[1]));
}
static inline fn_v8f fn_fold16(const fn_vf *a) { return fn_vlo(a[0]) + fn_vhi(a[0]); }

static inline fn_vf fn_ldv_f32(const float *p) { return fn_vload(p); }
static inline void fn_stv_f32(float *p, fn_vf v) { __builtin_memcpy(p, &v, sizeof v); }
static inline fn_vf fn_ldv_bf16(const fn_bf16 *p)
{
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return (fn_vf)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline void fn_stv_bf16(fn_bf16 *p, fn_vf v)
{
#if defined(__AVX512BF16__)
    /* VCVTNEPS2BF16 rounds to nearest even and quiets NaNs as fn_st_bf16
     * does, but flushes subnormal float32 values to zero: a vector holding
     * one (rare: below 1.2e-38) takes the integer path */
    __m512i u = _mm512_castps_si512((__m512)v);
    __mmask16 sub = _mm512_mask_test_epi32_mask(
        _mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7f800000)), u,
        _mm512_set1_epi32(0x007fffff));
    if (__builtin_expect(sub == 0, 1)) {
        _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh((__m512)v));
        return;
    }
#endif
    fn_st8f_bf16(p, fn_vlo(v));
    fn_st8f_bf16(p + 8, fn_vhi(v));
}
static inline fn_vf fn_ldv_f16(const fn_f16 *p)
{
    return (fn_vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline void fn_stv_f16(fn_f16 *p, fn_vf v)
{
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT));
}
#else
static inline fn_v8f fn_fold32(const fn_vf *a) { return (a[0] + a[1]) + (a[2] + a[3]); }
static inline fn_v8f fn_fold16(const fn_vf *a) { return a[0] + a[1]; }
#define FN_LDV_8(a, S, SUF, T)                                                \
static inline fn_vf fn_ldv_##SUF(const S *p) { return fn_ld8f_##SUF(p); }     \
static inline void fn_stv_##SUF(S *p, fn_vf v) { fn_st8f_##SUF(p, v); }
FN_LDV_8(_, float, f32, float)
FN_LDV_8(_, fn_bf16, bf16, float)
FN_LDV_8(_, fn_f16, f16, float)
#endif

/* Generic accessors, by the pointer's storage type:
 *   fn_at(p, i)        p[i] as a double (exact)
 *   fn_centre(p, m)    m rounded to p's compute type, as a double: the centre
 *                      c of (x - c) * s + t, so that x - c cancels exactly
 *   fn_wat(p, w, i)    w[i] of a weight array in p's compute type, as a double
 *   fn_csize(p)        bytes of p's compute type (weights are given in it) */
#define FN_ACCESSORS(a, S, SUF, T)                                            \
static inline double fn_at_##SUF(const S *p, int64_t i)                       \
{                                                                             \
    return (double)fn_ld_##SUF(p[i]);                                         \
}                                                                             \
static inline double fn_centre_##SUF(const S *p, double m)                    \
{                                                                             \
    (void)p;                                                                  \
    return (double)(T)m;                                                      \
}                                                                             \
static inline double fn_wat_##SUF(const S *p, const void *w, int64_t i)       \
{                                                                             \
    (void)p;                                                                  \
    return (double)((const T *)w)[i];                                         \
}                                                                             \
static inline int64_t fn_csize_##SUF(const S *p)                              \
{                                                                             \
    (void)p;                                                                  \
    return (int64_t)sizeof(T);                                                \
}
FN_STORAGE_TYPES(FN_ACCESSORS, _)
#define fn_at(p, i) FN_PICK(fn_at, p)(p, i)
#define fn_centre(p, m) FN_PICK(fn_centre, p)(p, m)
#define fn_wat(p, w, i) FN_PICK(fn_wat, p)(p, w, i)
#define fn_csize(p) FN_PICK(fn_csize, p)(p)

/* Streaming (non-temporal) stores of a tile computed in L1: the output
 * line is written without first being read into the cache (a third less
 * memory traffic for a large output that is not re-read soon).  The values
 * are the tile's bits, whatever the store instruction.  fn_stream_fence()
 * orders them before the results are used (once per row, by the writer). */
static inline void fn_stream_f32(float *dst, const float *src, int64_t n)
{
#if defined(__SSE2__)
    int64_t i = 0;
    while (i < n && ((uintptr_t)(dst + i) & 31)) {
        dst[i] = src[i];
        i++;
    }
#if defined(__AVX__)
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#else
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
#endif
    for (; i < n; i++) dst[i] = src[i];
#else
    memcpy(dst, src, (size_t)n * sizeof(float));
#endif
}

static inline void fn_stream_f64(double *dst, const double *src, int64_t n)
{
#if defined(__SSE2__)
    int64_t i = 0;
    while (i < n && ((uintptr_t)(dst + i) & 31)) {
        dst[i] = src[i];
        i++;
    }
#if defined(__AVX__)
    for (; i + 4 <= n; i += 4) _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
#else
    for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
#endif
    for (; i < n; i++) dst[i] = src[i];
#else
    memcpy(dst, src, (size_t)n * sizeof(double));
#endif
}
static inline void fn_stream_u16(uint16_t *dst, const uint16_t *src, int64_t n)
{
#if defined(__SSE2__)
    int64_t i = 0;
    while (i < n && ((uintptr_t)(dst + i) & 15)) {
        dst[i] = src[i];
        i++;
    }
    for (; i + 8 <= n; i += 8)
        _mm_stream_si128((__m128i *)(dst + i), _mm_loadu_si128((const __m128i *)(src + i)));
    for (; i < n; i++) dst[i] = src[i];
#else
    memcpy(dst, src, (size_t)n * sizeof(uint16_t));
#endif
}
static inline void fn_stream_bf16(fn_bf16 *dst, const fn_bf16 *src, int64_t n)
{
    fn_stream_u16(dst, src, n);
}
static inline void fn_stream_f16(fn_f16 *dst, const fn_f16 *src, int64_t n)
{
    fn_stream_u16((uint16_t *)dst, (const uint16_t *)src, n);
}
#define fn_stream(dst, src, n) FN_PICK(fn_stream, dst)(dst, src, n)

static inline void fn_prefetch(const void *p)
{
    __builtin_prefetch(p, 0, 3);
}

static inline void fn_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/* float32 data: sums over blocks of FN_BLOCK elements are carried in float32
 * vectors (8 lanes, at most 8 terms each) and flushed to float64 after each
 * block, twice the speed of float64 lanes.  The terms are deviations from a
 * centre near the mean, so a block sum has float32's relative precision
 * (~1e-7) and the flushed total keeps float64's.  A block whose float32 sum is
 * not finite (values near the float32 range) is redone in float64. */
#define FN_BLOCK 64

/* Statistics passes over float32 runs: four float32 vector accumulators
 * (32 lanes, so four independent add chains), a block of FN_SBLOCK = 128
 * values puts 4 terms in each lane; the block's lanes are combined in
 * float32 to 8 and added, lane by lane, to float64 vector totals, summed in a
 * fixed order at the end.  What is left of a run under FN_SBLOCK (or a run
 * shorter than that) takes one more float32 block of 16 lanes (at most 7
 * terms each) over its first multiple of 16, flushed the same way; its last
 * 0-15 values are added in float64.  A run whose float64 total is not finite
 * (a float32 block overflowed) is summed again wholly in float64. */
#define FN_SBLOCK 128
#endif
