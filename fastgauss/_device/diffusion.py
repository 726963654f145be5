"""Per-element diffusion formulas shared by the CPU and CUDA kernels.

Choices between computed values (never branches around arithmetic) so that the CPU
loops vectorize; comparisons with NaN are false, so NaN passes through clamp.
"""


def linear_element(a, u, b, w):
    """a u + b w: q_sample, the posterior mean, and every parameterization conversion."""
    return a * u + b * w


def clamp(x, limit):
    """x limited to [-limit, limit]; NaN stays NaN; limit = inf means no clamp."""
    low = -limit
    return limit if x > limit else (low if x < low else x)


def term(c, x):
    """c x, or exactly 0 where c = 0: a term the op's formula does not have, so an inf in
    x does not turn into 0 * inf = NaN."""
    product = c * x
    return product if c != 0 else c


def step_element(ax, am, k0, kx, km, ks, limit, xt, m, z):
    """One reverse step: x0 = clamp(ax x_t + am m), out = k0 x0 + kx x_t + km m (+ ks z)."""
    x0 = clamp(term(ax, xt) + term(am, m), limit)
    value = term(k0, x0) + term(kx, xt) + term(km, m)
    noisy = value + ks * z
    return (noisy if ks != 0 else value), x0
