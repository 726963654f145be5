"""Counter-based random numbers, as scalar functions both targets compile.

Philox4x32-10 (Salmon et al. 2011), the stream layout, uniform conversions and
Box-Muller, with a vectorizable log and sincos: the llvmlite wheels have no SVML, so
math.log/sin/cos calls would keep the CPU loops scalar. These approximations are
branch-free (selects only) and use the same expressions on the GPU.

32-bit words are carried in uint64 values: Numba widens integer arithmetic to 64
bits anyway, and a 32 x 32 -> 64-bit product gives Philox's mulhi and mullo at once.
Every constant is typed (np.uint64, np.float32) so no expression silently becomes
float64.

Approximation accuracy, asserted by tests/test_random.py against NumPy in float64
over the whole domains (measured maxima in brackets):
  log_unit32, log_unit64  on [2**-64, 1]:  within 3 ulp  [2.3 ulp, 2.0 ulp]
  sincos_turn32           on [0, 1]:       abs error <= 2**-23 = 1.2e-7  [9.7e-8]
  sincos_turn64           on [0, 1]:       abs error <= 2**-50 = 8.9e-16  [7.2e-16]
Box-Muller tails: float32 normals reach sqrt(-2 ln 2**-32) = 6.660 sigma, float64
normals sqrt(-2 ln 2**-54) = 8.652 sigma.
"""

import math
from fractions import Fraction

import numpy as np

# Philox4x32 round multipliers and Weyl key increments.
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
U1 = np.uint64(1)
U5 = np.uint64(5)
U6 = np.uint64(6)
U8 = np.uint64(8)
U11 = np.uint64(11)


def philox_round(c0, c1, c2, c3, k0, k1):
    p0 = PHILOX_M0 * c0
    p1 = PHILOX_M1 * c2
    return (p1 >> SHIFT32) ^ c1 ^ k0, p1 & MASK32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & MASK32


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32 with 10 rounds: counter (c0..c3) and key (k0, k1), each a 32-bit word."""
    # Unrolled by hand: LLVM vectorizes only innermost loops, so a round loop here
    # would keep the caller's loop over blocks scalar.
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    k0, k1 = bump_key(k0, k1)
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    k0, k1 = bump_key(k0, k1)
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    k0, k1 = bump_key(k0, k1)
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    k0, k1 = bump_key(k0, k1)
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    k0, k1 = bump_key(k0, k1)
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    k0, k1 = bump_key(k0, k1)
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    k0, k1 = bump_key(k0, k1)
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    k0, k1 = bump_key(k0, k1)
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    k0, k1 = bump_key(k0, k1)
    return philox_round(c0, c1, c2, c3, k0, k1)


def bump_key(k0, k1):
    """The next round's key: (k0 + W0, k1 + W1) mod 2**32."""
    return (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32


def counter_plus(o0, o1, o2, o3, n):
    """The 128-bit counter (o0 least significant word) plus the 64-bit block index n."""
    low = o0 + (n & MASK32)
    mid = o1 + (n >> SHIFT32) + (low >> SHIFT32)
    high = o2 + (mid >> SHIFT32)
    return low & MASK32, mid & MASK32, high & MASK32, (o3 + (high >> SHIFT32)) & MASK32


def block(o0, o1, o2, o3, k0, k1, n):
    """The four words of stream block n: Philox of (counter offset + n)."""
    c0, c1, c2, c3 = counter_plus(o0, o1, o2, o3, n)
    return philox4x32_10(c0, c1, c2, c3, k0, k1)


def window_index(e, base, run, extents, strides):
    """The global C-order index of local element e of a block (fastgauss._plans.stream.kernel_window):
    base + e % run + the outer index of its run (e // run unravelled over extents) times strides."""
    r = e // run
    g = base + (e - r * run)
    a = extents.size - 1
    while a >= 0:
        q = r // extents[a]
        g += (r - q * extents[a]) * strides[a]
        r = q
        a -= 1
    return g


# --- uniforms -------------------------------------------------------------------------

F32_2M24 = np.float32(2.0**-24)
F32_2M31 = np.float32(2.0**-31)
F32_2M32 = np.float32(2.0**-32)
F64_2M53 = 2.0**-53
F64_2M54 = 2.0**-54
F64_2P26 = 2.0**26
F64_2P32 = 2.0**32


def product(a, b):
    """a b, rounded by itself. Every product in this module that feeds a sum is written
    product(a, b): the CPU rounds a b + c twice, while NVVM fuses a plain a * b + c into one FMA
    (one rounding) wherever it can, so the CUDA target swaps in libdevice's fmul_rn / dmul_rn
    (PTX mul.rn, which is never fused) and the GPU's numbers are the CPU's, bit for bit."""
    return a * b


def uniform32(w):
    """[0, 1) float32 from the top 24 bits of a word (as NumPy's float32 random)."""
    return np.float32(np.int32(w >> U8)) * F32_2M24


def uniform64(w0, w1):
    """[0, 1) float64 from 27 + 26 bits of two words (as NumPy's random)."""
    return (product(np.float64(np.int64(w0 >> U5)), F64_2P26) + np.float64(np.int64(w1 >> U6))) * F64_2M53


def open_uniform32(w):
    """(0, 1] float32 from 31 bits, never 0: the smallest value is 2**-32."""
    return product(np.float32(np.int32(w >> U1)), F32_2M31) + F32_2M32


def open_uniform64(w0, w1):
    """(0, 1) float64 from 53 bits, never 0: the smallest value is 2**-54."""
    m = product(np.float64(np.int64(w0 >> U11)), F64_2P32) + np.float64(np.int64(w1))
    return product(m, F64_2M53) + F64_2M54


def turn53(w0, w1):
    """[0, 1) float64 from 53 bits: the fraction of a turn for the Box-Muller angle."""
    return (product(np.float64(np.int64(w0 >> U11)), F64_2P32) + np.float64(np.int64(w1))) * F64_2M53


# --- division by a constant ----------------------------------------------------------------
# The series below divide z by 17 integer constants y: z / y, correctly rounded, is part of
# the stream's definition. A target may compute that quotient without the divider, which
# bounds the float64 normals on the CPU (fastgauss.cpu.random does, with FMAs):
#
#   q0 = RN(z h)   or, for DIV182 and DIV210,   q0 = RN(z h + RN(z l))   (one FMA)
#   r  = z - q0 y        exact: RN(-q0 y + z), one FMA
#   q  = RN(q0 + r h)    one FMA;  q = RN(z / y) for every z the series can see,
#
# with h = RN(1/y) and l = RN(1/y - h), the constants DIV<y> = (y, h) or (y, h, l).
#
# Markstein's theorem (P. Markstein, IBM J. Res. Dev. 34(1), 1990; Muller et al., Handbook
# of Floating-Point Arithmetic, on division with an FMA): in binary floating-point arithmetic
# of precision p (here 53) with round-to-nearest-even, for floating-point z and y != 0, if
#   (i)  q0 is a faithful rounding of z/y (one of the two floats that enclose it), and
#   (ii) h approximates 1/y with relative error less than 2**-p,
# and nothing underflows or overflows, then r = z - q0 y is a floating-point number (so one
# FMA gives it exactly) and RN(q0 + r h) = RN(z / y). (Markstein's own statement asks that q0
# be within 1 ulp of z/y and h within 1/2 ulp of 1/y; both follow from (i) and (ii) here.)
#
# (ii): h = RN(1/y) is within 1/2 ulp of 1/y, relative error < 2**-53 since no y is a power
# of two.
# (i): q0 = RN(w), w = Q (1 + eps), Q = z / y. Lemma: |eps| <= 2**-54 makes RN(w) faithful.
# Proof: let 2**e <= Q < 2**(e + 1), u = 2**(e - 52) the spacing of floats there; then
# |w - Q| <= 2**-54 Q < u / 2. Above: w < Q + u/2 <= RU(Q) + u/2, at most the midpoint of RU(Q)
# and the next float (spaced >= u), so RN(w) <= RU(Q). Below: if RD(Q) > 2**e, w > Q - u/2 >=
# RD(Q) - u/2, the midpoint of RD(Q) and the float before it, so RN(w) >= RD(Q); if RD(Q) =
# 2**e (where the floats below are spaced u/2), w >= Q (1 - 2**-54) >= 2**e - u/4, the midpoint
# of 2**e and the float before it, and a tie goes to 2**e (even), so again RN(w) >= RD(Q). RN
# is monotonic, so RN(w) is RD(Q) or RU(Q).  QED
# One constant: w = z h exactly, eps = y h - 1, a constant. Its values, in units of 2**-54:
#   y     6     12    20    21    30     42    56    72    90       110     132   156
#   eps  -1    -1    +1    -1    -1/4   -1    -1    -1    +11/16   -7/8    +1/2  -5/8
#   y    240   272   306     |  182      210
#   eps  -1/4  -1/4  +35/64  |  +45/32   +13/8   (over 2**-54: these take the pair (h, l))
# Two constants: w = z h + RN(z l) = Q (1 + eps), |eps| <= |y (h + l) - 1| + 2**-53 y |l|:
#   0.95 2**-106 (182) and 1.07 2**-106 (210), far below 2**-54.
# tests/test_division.py recomputes every bound with fractions.Fraction.
# Domain: z = a a (sincos_turn64: a = 0 or |a| >= RN(2 pi) 2**-53) lies in {0} u [2**-102, 0.62],
# and z = s s (log_unit64: s = 0 or |s| > 2**-55) in {0} u [2**-110, 0.03]: every quotient,
# remainder and z l is far from the subnormals; z = 0 gives q0 = r = q = +0 = 0 / y.


def divide(z, d):
    """z / d[0], correctly rounded, for a constant d = DIV<y> (see above). Here: the division."""
    return z / d[0]


DIV6, DIV12, DIV20, DIV21, DIV30, DIV42, DIV56, DIV72, DIV90, DIV110, DIV132, DIV156, DIV240, DIV272, DIV306 = (
    (float(y), 1 / y) for y in (6, 12, 20, 21, 30, 42, 56, 72, 90, 110, 132, 156, 240, 272, 306)
)  # (y, RN(1/y)): Python's int / int is correctly rounded
# (y, h, RN(1/y - h)): Fraction's float() is correctly rounded too
DIV182, DIV210 = ((float(y), 1 / y, float(Fraction(1, y) - Fraction(1 / y))) for y in (182, 210))


# --- log on (0, 1] --------------------------------------------------------------------
# x is scaled by powers of two into [sqrt(1/2), sqrt(2)) with selects (x * 2**k is
# exact), then log(x) = 2 atanh(s), s = (x - 1) / (x + 1), |s| <= 0.1716, by its series.

LN2_HI32 = np.float32(0.693145751953125)  # few bits, so e * LN2_HI32 is exact
LN2_LO32 = np.float32(1.4286067653302226e-06)
SQRT_HALF32 = np.float32(0.70710678118654752)
SQRT_HALF64 = 0.70710678118654752
ONE32 = np.float32(1.0)
TWO32 = np.float32(2.0)
LN2_HI64 = 0.6931471803691238  # 2**-1 * 1.3862943607382476, low bits cleared
LN2_LO64 = 1.9082149292705877e-10


def scale_step(x, e, step):
    """(x * factor, e - k) where x < threshold, for step = (threshold, factor, k)."""
    threshold, factor, k = step
    # Arithmetic first, then pick: LLVM turns a choice between computed values
    # into a vector select, but keeps branches around arithmetic.
    small = x < threshold
    scaled_x = x * factor
    scaled_e = e - k
    return (scaled_x if small else x), (scaled_e if small else e)


# (threshold, factor, k) for each step, in float32 and in float64
STEPS32 = [(np.float32(2.0**-k), np.float32(2.0**k), np.float32(k)) for k in (32, 16, 8, 4, 2, 1)]
STEPS64 = [(2.0**-k, 2.0**k, float(k)) for k in (32, 16, 8, 4, 2, 1)]
S32_0, S32_1, S32_2, S32_3, S32_4, S32_5 = STEPS32
S64_0, S64_1, S64_2, S64_3, S64_4, S64_5 = STEPS64


def reduce_unit32(x):
    """(m, e), x = m 2**e with m in [SQRT_HALF32, 2 SQRT_HALF32) and e an integer (as float32), for
    float32 x in [2**-64, 1]. Every step is exact, so (m, e) is the one such pair: a target may
    read it from x's exponent field instead (fastgauss.cpu.random does), with the same bits."""
    e = np.float32(0.0)
    x, e = scale_step(x, e, S32_0)
    x, e = scale_step(x, e, S32_1)
    x, e = scale_step(x, e, S32_2)
    x, e = scale_step(x, e, S32_3)
    x, e = scale_step(x, e, S32_4)
    x, e = scale_step(x, e, S32_5)
    return scale_step(x, e, (SQRT_HALF32, TWO32, ONE32))


def reduce_unit64(x):
    """reduce_unit32 for float64 x in [2**-64, 1]: m in [sqrt(1/2), 2 sqrt(1/2)) (float64's constant)."""
    e = 0.0
    x, e = scale_step(x, e, S64_0)
    x, e = scale_step(x, e, S64_1)
    x, e = scale_step(x, e, S64_2)
    x, e = scale_step(x, e, S64_3)
    x, e = scale_step(x, e, S64_4)
    x, e = scale_step(x, e, S64_5)
    return scale_step(x, e, (SQRT_HALF64, 2.0, 1.0))


def log_unit32(x):
    """Natural log of float32 x in [2**-64, 1]."""
    x, e = reduce_unit32(x)
    s = (x - ONE32) / (x + ONE32)
    z = s * s
    series = ONE32 + product(z, np.float32(1 / 3) + product(z, np.float32(1 / 5) + product(z, np.float32(1 / 7) + product(z, np.float32(1 / 9)))))
    return product(e, LN2_HI32) + (product(e, LN2_LO32) + product(TWO32 * s, series))


def log_unit64(x):
    """Natural log of float64 x in [2**-64, 1]."""
    x, e = reduce_unit64(x)
    s = (x - 1.0) / (x + 1.0)
    z = s * s
    series = 1.0 + product(z, 1 / 3 + product(z, 1 / 5 + product(z, 1 / 7 + product(z, 1 / 9 + product(z, 1 / 11 + product(z, 1 / 13 + product(z, 1 / 15 + product(z, 1 / 17 + product(z, 1 / 19 + divide(z, DIV21))))))))))
    return product(e, LN2_HI64) + (product(e, LN2_LO64) + product(2.0 * s, series))


# --- sin and cos of 2 pi u for u in [0, 1] --------------------------------------------
# u - q/4 (q the nearest quarter turn) is exact; its angle a lies in [-pi/4, pi/4],
# where the Taylor series converge fast; the quadrant q swaps and negates.

TWO_PI32 = np.float32(2 * math.pi)
QUARTER32 = np.float32(0.25)
FOUR32 = np.float32(4.0)
HALF32 = np.float32(0.5)


def _quadrant(sin_a, cos_a, q):
    swap = (q & 1) == 1
    s = cos_a if swap else sin_a
    c = sin_a if swap else cos_a
    s = -s if (q & 2) == 2 else s
    c = -c if ((q + 1) & 2) == 2 else c
    return s, c


def sincos_turn32(u):
    """(sin(2 pi u), cos(2 pi u)) in float32 for u in [0, 1]."""
    q = np.int32(product(u, FOUR32) + HALF32)
    a = (u - product(np.float32(q), QUARTER32)) * TWO_PI32
    z = a * a
    sin_a = a * (ONE32 - product(z * np.float32(1 / 6), ONE32 - product(z * np.float32(1 / 20), ONE32 - product(z * np.float32(1 / 42), ONE32 - product(z, np.float32(1 / 72))))))
    cos_a = ONE32 - product(z * HALF32, ONE32 - product(z * np.float32(1 / 12), ONE32 - product(z * np.float32(1 / 30), ONE32 - product(z * np.float32(1 / 56), ONE32 - product(z, np.float32(1 / 90))))))
    return _quadrant(sin_a, cos_a, q)


def sincos_turn64(u):
    """(sin(2 pi u), cos(2 pi u)) in float64 for u in [0, 1]."""
    q = np.int32(product(u, 4.0) + 0.5)
    a = (u - product(np.float64(q), 0.25)) * (2 * math.pi)
    z = a * a
    sin_a = a * (1.0 - product(divide(z, DIV6), 1.0 - product(divide(z, DIV20), 1.0 - product(divide(z, DIV42), 1.0 - product(divide(z, DIV72), 1.0 - product(divide(z, DIV110), 1.0 - product(divide(z, DIV156), 1.0 - product(divide(z, DIV210), 1.0 - divide(z, DIV272)))))))))
    cos_a = 1.0 - product(z / 2, 1.0 - product(divide(z, DIV12), 1.0 - product(divide(z, DIV30), 1.0 - product(divide(z, DIV56), 1.0 - product(divide(z, DIV90), 1.0 - product(divide(z, DIV132), 1.0 - product(divide(z, DIV182), 1.0 - product(divide(z, DIV240), 1.0 - divide(z, DIV306)))))))))
    return _quadrant(sin_a, cos_a, q)


# --- Box-Muller ---------------------------------------------------------------------------


def box_muller32(w0, w1):
    """Two float32 normals from two words: radius from w0, angle from w1."""
    radius = math.sqrt(np.float32(-2.0) * log_unit32(open_uniform32(w0)))
    s, c = sincos_turn32(uniform32(w1))
    return np.float32(radius * c), np.float32(radius * s)


def box_muller64(w0, w1, w2, w3):
    """Two float64 normals from four words: radius from (w0, w1), angle from (w2, w3)."""
    radius = math.sqrt(-2.0 * log_unit64(open_uniform64(w0, w1)))
    s, c = sincos_turn64(turn53(w2, w3))
    return radius * c, radius * s
