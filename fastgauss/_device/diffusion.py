"""Per-element diffusion formulas shared by the CPU and CUDA kernels.

Choices between computed values (never branches around arithmetic) so that the CPU
loops vectorize; comparisons with NaN are false, so NaN passes through clamp.
"""


def product(a, b):
    """a b, rounded by itself (see fastgauss._device.random.product): every product here that
    feeds a sum is written so, and the GPU's results are the CPU's, bit for bit."""
    return a * b


def linear_element(a, u, b, w):
    """a u + b w: q_sample, the posterior mean, and every parameterization conversion."""
    return product(a, u) + product(b, w)


def clamp(x, limit):
    """x limited to [-limit, limit]; NaN stays NaN; limit = inf means no clamp."""
    low = -limit
    return limit if x > limit else (low if x < low else x)


def term(c, x):
    """c x, or exactly 0 where c = 0: a term the op's formula does not have, so an inf in
    x does not turn into 0 * inf = NaN."""
    cx = product(c, x)
    return cx if c != 0 else c


def step_element(ax, am, k0, kx, km, ks, limit, xt, m, z):
    """One reverse step: x0 = clamp(ax x_t + am m), out = k0 x0 + kx x_t + km m (+ ks z)."""
    x0 = clamp(term(ax, xt) + term(am, m), limit)
    value = term(k0, x0) + term(kx, xt) + term(km, m)
    noisy = value + product(ks, z)
    return (noisy if ks != 0 else value), x0


def step_vjp_element(ax, am, k0, kx, km, ks, limit, xt, m, g, g0):
    """The gradients of one step element (``step_element``) from the cotangents g (of out)
    and g0 (of the clamped x0): (d/dx_t, d/dm, d/dz). The clamp passes the gradient where
    -limit <= x0 <= limit and blocks it outside, as torch.clamp does (limit = inf: no clamp,
    everything passes). A linear op a u + b w is the step with kx = a, km = b, the rest 0."""
    raw = term(ax, xt) + term(am, m)
    inside = (raw >= -limit and raw <= limit) or limit == limit + limit  # the second: limit = inf
    through = term(k0, g) + g0
    through = through if inside else limit - limit  # a zero of the dtype (limit is finite here)
    return term(kx, g) + term(ax, through), term(km, g) + term(am, through), term(ks, g)
