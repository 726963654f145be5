"""Per-element terms of the diffusion training objective (and their derivatives), as
scalar functions both targets compile from the same source.

Every function takes ``k``, one row's coefficients as a tuple indexed by the column
constants below (built from the row's timestep by fastgauss._plans.objective and read
with ``coefficients``), and ``c``, the fastgauss._device.kl Constants of the compute
dtype. The KL, the discretized likelihood, exp and the clamp are fastgauss._device.kl's
and fastgauss._device.diffusion's (``compile_for(..., linked=...)`` gives each target's
compiled versions of them): the objective adds only the algebra around them.

The model's x0 and mean (improved-diffusion's p_mean_variance):

    x0_hat  = clamp(ax x_t + am m, limit)         (ax, am from the prediction type)
    mu_hat  = c1 x0_hat + c2 x_t                  (the posterior mean coefficients)
    logvar  = lv_a + lv_b v                       (learned: 0 + 1 v; learned_range:
                                                   (max + min)/2 + (max - min)/2 v; fixed: lv_a)

and the terms, before the row's weight:

    vlb     = KL(N(c1 x0 + c2 x_t, e^true_logvar) || N(mu_hat, e^logvar))        t > 0
            = -log P_discretized(x0; mu_hat, log_scale = logvar / 2)          t = 0
    prior   = KL(N(sa x0, e^true_logvar) || N(0, 1)): the KL rows of vlb with c1 = sa, c2 = 0,
              ax = am = 0 (a model mean of 0) and lv_a = lv_b = 0
    mse     = (m - (tp x0 + tq noise))^2          (the prediction type's target)
    hybrid  = mse_weight mse + weight vlb(x0, x_t = sa x0 + sn noise, m, v)

``value`` and ``gradient`` dispatch on the op code (a row-invariant int): ``gradient``
returns the derivatives of the weighted term with respect to the op's four operands.
"""

from fastgauss._device.diffusion import clamp, term
from fastgauss._device.kl import discretized_gaussian_log_likelihood, exp, exp_minus_one, normal_kl, sigmoid

# Op codes of the kernels: which term an (a, b, u, w) operand set is.
LOGVAR, VLB, LOSS = 0, 1, 2
HYBRID = VLB  # the bound's loop with the squared error switched on (see ``bound``)
PRIOR = VLB  # the KL rows with c1 = sa, c2 = 0 and a model mean and log variance of 0
# Operands per op:  LOGVAR (v, -, -, -)   VLB (x0, x_t, m, v)   HYBRID (x0, noise, m, v)
#                   PRIOR (x0, -, -, -)   LOSS (m, x0, noise, -); absent operands are any
#                   array of the op (never read: their coefficients are 0 or they are unused).

# Columns of a row's coefficient tuple.
(AX, AM, LIMIT, C1, C2, TRUE_LOGVAR, LV_A, LV_B, DECODER, HALF_BIN, WEIGHT, TP, TQ, MSE_WEIGHT, SA, SN,
 XA, XB, MEAN_GRAD) = range(19)
COLUMNS = 19


def coefficients(table, r):
    """Row r of a (rows, COLUMNS) coefficient table, as a tuple (registers, not loads)."""
    return (
        table[r, 0], table[r, 1], table[r, 2], table[r, 3], table[r, 4], table[r, 5], table[r, 6], table[r, 7],
        table[r, 8], table[r, 9], table[r, 10], table[r, 11], table[r, 12], table[r, 13], table[r, 14], table[r, 15],
        table[r, 16], table[r, 17], table[r, 18],
    )


def model_x0_raw(k, xt, m):
    return term(k[AX], xt) + term(k[AM], m)


def model_logvar(k, v):
    """The model's log variance; exactly lv_a for the fixed kinds (lv_b = 0), whatever v holds."""
    return k[LV_A] + term(k[LV_B], v)


def model_mean(k, xt, m):
    return k[C1] * clamp(model_x0_raw(k, xt, m), k[LIMIT]) + term(k[C2], xt)


def vlb_kl(k, x0, xt, m, v, c):
    """KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) in nats."""
    true_mean = k[C1] * x0 + term(k[C2], xt)
    return normal_kl(true_mean, k[TRUE_LOGVAR], model_mean(k, xt, m), model_logvar(k, v), c)


def vlb_decoder(k, x0, xt, m, v, c):
    """-log p(x0 | x_1) in nats: the discretized decoder at t = 0."""
    log_scale = c.half * model_logvar(k, v)
    return -discretized_gaussian_log_likelihood(x0, model_mean(k, xt, m), log_scale, k[HALF_BIN], c)


def residual(k, m, x0, noise):
    return m - (term(k[TP], x0) + term(k[TQ], noise))


def bound_xt(k, x0, b):
    """x_t: the operand itself (VLB: xa = 0, xb = 1) or sa x0 + sn noise (HYBRID)."""
    return term(k[XA], x0) + k[XB] * b


def bound_kl(k, x0, b, m, v, c):
    """The VLB and HYBRID term of a row with t > 0: weight KL + mse_weight (m - target)^2 (the
    squared error is exactly 0 for VLB, where mse_weight = 0)."""
    r = residual(k, m, x0, b)
    return k[WEIGHT] * vlb_kl(k, x0, bound_xt(k, x0, b), m, v, c) + term(k[MSE_WEIGHT], r * r)


def bound_decoder(k, x0, b, m, v, c):
    """The VLB and HYBRID term of a row with t = 0: the decoder's in place of the KL."""
    r = residual(k, m, x0, b)
    return k[WEIGHT] * vlb_decoder(k, x0, bound_xt(k, x0, b), m, v, c) + term(k[MSE_WEIGHT], r * r)


def bound(k, x0, b, m, v, decoder, c):
    return bound_decoder(k, x0, b, m, v, c) if decoder else bound_kl(k, x0, b, m, v, c)


def value(op, k, a, b, u, w, c):
    """The op's weighted term for one element (see the module docstring for the operands)."""
    if op == LOGVAR:
        return model_logvar(k, a)
    if op == VLB:
        return bound(k, a, b, u, w, k[DECODER] != c.zero, c)
    r = residual(k, a, b, u)
    return k[MSE_WEIGHT] * (r * r)


# --- derivatives ----------------------------------------------------------------------------


def passes(k, xt, m, c):
    """1 where the clamp of x0_hat passes its input through (|x0_hat| <= limit, or NaN), else 0."""
    raw = model_x0_raw(k, xt, m)
    low = -k[LIMIT]
    return c.zero if (raw > k[LIMIT] or raw < low) else c.one


def kl_partials(k, x0, xt, m, v, c):
    """(d/d true_mean, d/d model_mean, d/d model_logvar) of the KL term, nats."""
    true_mean = k[C1] * x0 + term(k[C2], xt)
    logvar = model_logvar(k, v)
    d = true_mean - model_mean(k, xt, m)
    inv_var = exp(-logvar, c)
    x = k[TRUE_LOGVAR] - logvar
    one_minus_ratio = -exp_minus_one(x, c)  # 1 - e^(true_logvar - logvar)
    g_true = d * inv_var
    return g_true, -g_true, c.half * (one_minus_ratio - d * d * inv_var)


def decoder_partials(k, x0, xt, m, v, c):
    """(d/d x0, d/d model_mean, d/d model_logvar) of -log P_discretized (see vlb_decoder)."""
    mean = model_mean(k, xt, m)
    log_scale = c.half * model_logvar(k, v)
    inv_stdv = exp(-log_scale, c)
    centered = x0 - mean
    z_plus = inv_stdv * (centered + k[HALF_BIN])
    z_min = inv_stdv * (centered - k[HALF_BIN])
    z2p = z_plus * z_plus
    z2m = z_min * z_min
    a = c.two_sqrt_2_over_pi * (z_plus + c.gelu_cubic * z2p * z_plus)
    b = c.two_sqrt_2_over_pi * (z_min + c.gelu_cubic * z2m * z_min)
    sa_pos = sigmoid(a, c)
    sa_neg = sigmoid(-a, c)
    sb_pos = sigmoid(b, c)
    sb_neg = sigmoid(-b, c)
    flip = a + b > c.zero
    p = (sb_neg - sa_neg) if flip else (sa_pos - sb_pos)  # as the forward computes it
    d_a = sa_pos * sa_neg / p  # d log P / d a (middle bins)
    d_b = -(sb_pos * sb_neg) / p
    low = x0 < c.x_low
    high = x0 > c.x_high
    d_a = sa_neg if low else (c.zero if high else d_a)  # log sigmoid(a); log(1 - sigmoid(b))
    d_b = c.zero if low else (-sb_pos if high else d_b)
    p = sa_pos if low else (sb_neg if high else p)
    clamped = p < c.min_probability  # log(max(p, 1e-12)): no gradient below the floor
    slope = c.two_sqrt_2_over_pi * c.gelu_cubic * (c.one + c.one + c.one)
    g_plus = d_a * (c.two_sqrt_2_over_pi + slope * z2p)  # d log P / d z_plus
    g_min = d_b * (c.two_sqrt_2_over_pi + slope * z2m)
    g_plus = c.zero if clamped else g_plus
    g_min = c.zero if clamped else g_min
    g_x = -inv_stdv * (g_plus + g_min)  # of -log P
    g_log_scale = g_plus * z_plus + g_min * z_min
    return g_x, -g_x, c.half * g_log_scale


def vlb_gradient_kl(k, x0, xt, m, v, c):
    """(d/d x0, d/d x_t, d/d m, d/d v) of the vlb term of a row with t > 0 (the KL), nats (unweighted)."""
    g_true, g_mean, g_logvar = kl_partials(k, x0, xt, m, v, c)
    return vlb_chain(k, xt, m, g_true * k[C1], g_true, g_mean, g_logvar, c)


def vlb_gradient_decoder(k, x0, xt, m, v, c):
    """``vlb_gradient_kl`` of a row with t = 0 (the decoder's)."""
    g_x0, g_mean, g_logvar = decoder_partials(k, x0, xt, m, v, c)
    return vlb_chain(k, xt, m, g_x0, c.zero, g_mean, g_logvar, c)


def vlb_chain(k, xt, m, g_x0, g_true, g_mean, g_logvar, c):
    """(d/d x0, d/d x_t, d/d m, d/d v) of the vlb term from the partials of its KL or decoder
    term (d/d x0 directly, d/d true_mean, d/d model_mean, d/d model_logvar)."""
    through = g_mean * k[C1] * passes(k, xt, m, c)  # d/d x0_hat
    g_xt = term(k[C2], g_true + g_mean) + term(k[AX], through)
    return g_x0 + c.zero, g_xt, term(k[AM], through), term(k[LV_B], g_logvar)


def loss_gradient(k, m, x0, noise, c):
    """(d/dm, d/dx0, d/dnoise, 0) of mse_weight (m - tp x0 - tq noise)^2."""
    r2 = (k[MSE_WEIGHT] + k[MSE_WEIGHT]) * residual(k, m, x0, noise)
    return r2, -term(k[TP], r2), -term(k[TQ], r2), c.zero


def bound_gradient(k, x0, b, m, v, c):
    """(d/dx0, d/db, d/dm, d/dv) of the VLB / HYBRID term. HYBRID holds the model mean constant
    in its bound (mean_grad = 0: d/dm is the squared error's, d/dv the bound's); its x0 and
    noise derivatives are not meaningful there and not used."""
    return bound_gradient_decoder(k, x0, b, m, v, c) if k[DECODER] != c.zero else bound_gradient_kl(k, x0, b, m, v, c)


def bound_gradient_kl(k, x0, b, m, v, c):
    """``bound_gradient`` of a row with t > 0 (the CPU runs the two kinds of row in two loops)."""
    xt = bound_xt(k, x0, b)
    return bound_chain(k, x0, b, m, vlb_gradient_kl(k, x0, xt, m, v, c))


def bound_gradient_decoder(k, x0, b, m, v, c):
    """``bound_gradient`` of a row with t = 0."""
    xt = bound_xt(k, x0, b)
    return bound_chain(k, x0, b, m, vlb_gradient_decoder(k, x0, xt, m, v, c))


def bound_chain(k, x0, b, m, vlb_grads):
    """``bound_gradient`` from the vlb term's gradients (``vlb_gradient_kl`` or ``_decoder``)."""
    g_x0, g_xt, g_m, g_v = vlb_grads
    s = k[WEIGHT]
    r = residual(k, m, x0, b)
    g_mean = s * term(k[MEAN_GRAD], g_m) + term(k[MSE_WEIGHT], r + r)
    return s * (g_x0 + term(k[XA], g_xt)), s * k[XB] * g_xt, g_mean, s * g_v


def gradient(op, k, a, b, u, w, c):
    """(d/da, d/db, d/du, d/dw) of value(op, ...) for VLB (HYBRID) and LOSS."""
    if op == LOSS:
        return loss_gradient(k, a, b, u, c)
    return bound_gradient(k, a, b, u, w, c)
