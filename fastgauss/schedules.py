"""Diffusion noise schedules: the per-timestep tables every diffusion kernel reads.

:class:`NoiseSchedule` holds the T = ``num_timesteps`` float64 tables of a DDPM-style
forward process (betas, cumulative products, posterior coefficients, SNR), computed
once at construction and exposed as read-only NumPy arrays. This module imports only
NumPy, so building a schedule never compiles anything.
"""

import math
import numbers

import numpy as np

__all__ = ["NoiseSchedule"]


# --------------------------------------------------------------------------- checks


def _fmt(x):
    """A float as Python writes it: 1.5, nan, inf, 0.0."""
    return repr(float(x))


def _check_num_timesteps(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"num_timesteps must be an int; got {type(value).__name__} {value!r}")
    value = int(value)
    if value < 1:
        raise ValueError(f"num_timesteps must be a positive integer; got {value}")
    return value


def _check_real(name, value, low, high, low_open, high_open=False):
    """A finite real scalar in the interval low..high (open or closed ends; None: unbounded)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite; got {name} = {_fmt(x)}")
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    if too_low or too_high:
        if high is None:
            rule = f"> {low}" if low_open else f">= {low}"
        else:
            rule = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {rule}; got {name} = {_fmt(x)}")
    return x


def _as_vector(name, values):
    """A 1-D, non-empty, finite float64 copy of real-valued array-like ``values``."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:  # e.g. ragged nested lists
        raise ValueError(f"{name} must be a 1-D array of real numbers; {exc}") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} must be real, not complex; got dtype {arr.dtype}")
    if kind not in "fiu":
        raise TypeError(f"{name} must be an array of real numbers; got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty; got shape {arr.shape}")
    arr = np.array(arr, dtype=np.float64, copy=True)
    _first_bad(name, ~np.isfinite(arr), arr, "be finite")
    return arr


def _first_bad(name, bad, arr, requirement):
    """Raise ValueError naming the first index where ``bad`` is True, if any."""
    if bad.any():
        i = int(np.argmax(bad))
        more = int(np.count_nonzero(bad)) - 1
        tail = f" (and {more} more)" if more else ""
        raise ValueError(f"{name} must {requirement}; {name}[{i}] = {_fmt(arr[i])}{tail}")


def _check_betas(betas):
    _first_bad("betas", ~((betas > 0.0) & (betas <= 1.0)), betas, "be in (0, 1]")
    return betas


def _frozen(values):
    """A read-only float64 copy backed by an immutable bytes object.

    Returns (array, bytes). The array cannot be made writeable again (NumPy refuses
    to set WRITEABLE on an array whose memory belongs to a bytes object). -0.0 is
    normalized to +0.0 so that equal values have equal bytes.
    """
    data = (np.ascontiguousarray(values, dtype=np.float64) + 0.0).tobytes()
    arr = np.frombuffer(data, dtype=np.float64)
    arr.flags.writeable = False
    return arr, data


def _restore(cls, betas_bytes, abar_bytes):
    """Unpickle helper: rebuild a schedule from its defining tables (bitwise)."""
    obj = cls.__new__(cls)
    obj._setup(np.frombuffer(betas_bytes, dtype=np.float64), np.frombuffer(abar_bytes, dtype=np.float64))
    return obj


def _readonly(slot, doc):
    def fget(self):
        return getattr(self, slot)

    fget.__name__ = slot.lstrip("_")
    return property(fget, doc=doc)


# --------------------------------------------------------------------------- schedule


class NoiseSchedule:
    r"""A diffusion noise schedule of T = ``num_timesteps`` steps, with its float64 tables.

    The forward process is ``q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)``
    for 0-based ``t = 0 .. T-1`` (``x_{-1}`` is the data ``x_0``), so that
    ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with
    ``abar_t = prod_{s <= t} alpha_s``.

    Every table below is a read-only, C-contiguous float64 ``numpy.ndarray`` of shape
    ``(T,)``, computed once at construction (assigning an element raises
    ``ValueError``; the attributes cannot be rebound):

    ==================================  =================================================
    ``betas``                           beta_t, each in (0, 1]
    ``alphas``                          alpha_t = 1 - beta_t
    ``alphas_cumprod``                  abar_t = alpha_0 ... alpha_t (or as given exactly,
                                        see :meth:`from_alphas_cumprod`)
    ``alphas_cumprod_prev``             abar_{t-1}, with abar_{-1} = 1
    ``sqrt_alphas_cumprod``             sqrt(abar_t)
    ``sqrt_one_minus_alphas_cumprod``   sqrt(1 - abar_t)
    ``posterior_variance``              beta_t (1 - abar_{t-1}) / (1 - abar_t)
    ``posterior_log_variance_clipped``  log(posterior_variance), entry 0 replaced by
                                        entry 1
    ``posterior_mean_coef1``            beta_t sqrt(abar_{t-1}) / (1 - abar_t)
    ``posterior_mean_coef2``            (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
    ``snr``                             abar_t / (1 - abar_t)
    ==================================  =================================================

    The posterior ``q(x_{t-1} | x_t, x_0)`` is
    ``N(posterior_mean_coef1[t] x_0 + posterior_mean_coef2[t] x_t, posterior_variance[t] I)``.

    Parameters
    ----------
    betas : array_like
        1-D, non-empty, real, finite, every entry in (0, 1]; copied as float64.

    Raises
    ------
    TypeError
        ``betas`` is complex, boolean or not numeric.
    ValueError
        ``betas`` is not 1-D, is empty, has a non-finite entry or one outside (0, 1],
        or ``betas[0]`` is so small (below about 1.1e-16) that ``1 - betas[0]`` rounds
        to 1 in float64, which would make ``1 - alphas_cumprod[0]`` zero.

    Notes
    -----
    Numerics. Every table is computed in float64 straight from its formula, in the
    operation order of improved-diffusion / diffusers, and is a deterministic function
    of ``betas`` and ``alphas_cumprod`` alone (``1 - abar`` is computed as such, so it
    is exact whenever ``abar >= 0.5``). At t = 0, ``1 - abar_{-1}`` is exactly 0, so
    ``posterior_variance[0]`` and ``posterior_mean_coef2[0]`` are exactly 0 and there
    is no 0/0 anywhere: ``1 - abar_t > 0`` for every t.

    T = 1. ``posterior_variance`` is ``[0.0]`` and there is no entry 1 to clip with,
    so ``posterior_log_variance_clipped`` is ``[-inf]`` (the honest log of 0).

    Equality and hashing. Two schedules are equal when their ``betas`` and
    ``alphas_cumprod`` have identical bytes (every other table is a function of those
    two, so equal schedules have bitwise identical tables); ``hash`` agrees with
    ``==``, so a schedule can key a cache of device tables. Pickling and copying
    preserve all tables bitwise and keep them read-only.

    Examples
    --------
    >>> s = NoiseSchedule.linear(1000)
    >>> len(s), s.betas.dtype, s.betas.shape
    (1000, dtype('float64'), (1000,))
    >>> float(s.betas[0]), float(s.betas[-1])
    (0.0001, 0.02)
    >>> float(s.posterior_variance[0])
    0.0
    >>> s.betas[0] = 0.5
    Traceback (most recent call last):
        ...
    ValueError: assignment destination is read-only
    >>> NoiseSchedule([0.1, 0.2, 0.5])
    NoiseSchedule(num_timesteps=3, betas=[0.1 ... 0.5])
    """

    __slots__ = (
        "_num_timesteps",
        "_betas",
        "_alphas",
        "_alphas_cumprod",
        "_alphas_cumprod_prev",
        "_sqrt_alphas_cumprod",
        "_sqrt_one_minus_alphas_cumprod",
        "_posterior_variance",
        "_posterior_log_variance_clipped",
        "_posterior_mean_coef1",
        "_posterior_mean_coef2",
        "_snr",
        "_key",
        "_hash",
    )

    def __init__(self, betas):
        betas = _check_betas(_as_vector("betas", betas))
        self._setup(betas, np.cumprod(1.0 - betas))

    # ----------------------------------------------------------------- construction

    def _setup(self, betas, alphas_cumprod):
        """Compute and freeze every table from validated float64 betas and abar."""
        betas = np.asarray(betas, dtype=np.float64)
        abar = np.asarray(alphas_cumprod, dtype=np.float64) + 0.0  # -0.0 -> +0.0
        if not abar[0] < 1.0:
            raise ValueError(
                f"betas[0] = {_fmt(betas[0])} is too small: alphas_cumprod[0] = 1 - betas[0] rounds to "
                "1.0 in float64, so 1 - alphas_cumprod[0] would be 0 (betas[0] must be above about 1.1e-16)"
            )
        T = betas.shape[0]
        alphas = 1.0 - betas
        abar_prev = np.concatenate(([1.0], abar[:-1]))
        one_minus_abar = 1.0 - abar  # > 0 everywhere: abar is non-increasing and abar[0] < 1
        one_minus_abar_prev = 1.0 - abar_prev  # exactly 0 at t = 0
        posterior_variance = betas * one_minus_abar_prev / one_minus_abar
        clip_source = posterior_variance if T == 1 else np.concatenate((posterior_variance[1:2], posterior_variance[1:]))
        with np.errstate(divide="ignore"):  # T == 1: log(0) = -inf, by design
            posterior_log_variance_clipped = np.log(clip_source)
        tables = {
            "_betas": betas,
            "_alphas": alphas,
            "_alphas_cumprod": abar,
            "_alphas_cumprod_prev": abar_prev,
            "_sqrt_alphas_cumprod": np.sqrt(abar),
            "_sqrt_one_minus_alphas_cumprod": np.sqrt(one_minus_abar),
            "_posterior_variance": posterior_variance,
            "_posterior_log_variance_clipped": posterior_log_variance_clipped,
            "_posterior_mean_coef1": betas * np.sqrt(abar_prev) / one_minus_abar,
            "_posterior_mean_coef2": one_minus_abar_prev * np.sqrt(alphas) / one_minus_abar,
            "_snr": abar / one_minus_abar,
        }
        raw = {}
        for slot, values in tables.items():
            arr, raw[slot] = _frozen(values)
            object.__setattr__(self, slot, arr)
        key = (T, raw["_betas"], raw["_alphas_cumprod"])
        object.__setattr__(self, "_num_timesteps", T)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_hash", hash(key))

    @classmethod
    def _from_betas(cls, betas):
        """A schedule from float64 betas computed by a constructor (range still checked)."""
        betas = _check_betas(np.asarray(betas, dtype=np.float64))
        obj = cls.__new__(cls)
        obj._setup(betas, np.cumprod(1.0 - betas))
        return obj

    @classmethod
    def linear(cls, num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
        """The DDPM linear schedule (Ho et al. 2020): betas evenly spaced from start to end.

        ``betas = np.linspace(beta_start, beta_end, T)`` in float64, i.e.
        ``beta_i = beta_start + (beta_end - beta_start) * i / (T - 1)`` with both ends
        exact (``T = 1`` gives ``[beta_start]``).

        Parameters
        ----------
        num_timesteps : int
            T >= 1.
        beta_start, beta_end : float
            First and last beta, each in (0, 1].

        Returns
        -------
        NoiseSchedule

        Examples
        --------
        >>> s = NoiseSchedule.linear(1000)
        >>> s
        NoiseSchedule(num_timesteps=1000, betas=[0.0001 ... 0.02])
        >>> bool(np.allclose(np.diff(s.betas), (0.02 - 1e-4) / 999, rtol=1e-12, atol=0))
        True
        """
        T = _check_num_timesteps(num_timesteps)
        beta_start = _check_real("beta_start", beta_start, 0, 1, low_open=True)
        beta_end = _check_real("beta_end", beta_end, 0, 1, low_open=True)
        return cls._from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64))

    @classmethod
    def scaled_linear(cls, num_timesteps=1000, beta_start=0.00085, beta_end=0.012):
        """The Stable Diffusion schedule: betas linear in sqrt(beta) (diffusers' "scaled_linear").

        ``betas = np.linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`` in float64.

        Parameters
        ----------
        num_timesteps : int
            T >= 1.
        beta_start, beta_end : float
            First and last beta (up to rounding of sqrt and square), each in (0, 1].

        Returns
        -------
        NoiseSchedule

        Examples
        --------
        >>> s = NoiseSchedule.scaled_linear(1000)
        >>> round(float(s.betas[0]), 12), round(float(s.betas[-1]), 12)
        (0.00085, 0.012)
        """
        T = _check_num_timesteps(num_timesteps)
        beta_start = _check_real("beta_start", beta_start, 0, 1, low_open=True)
        beta_end = _check_real("beta_end", beta_end, 0, 1, low_open=True)
        roots = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64)
        return cls._from_betas(roots**2)

    @classmethod
    def cosine(cls, num_timesteps=1000, s=0.008, max_beta=0.999):
        """The cosine schedule of Nichol & Dhariwal 2021 (improved-diffusion's betas_for_alpha_bar).

        With ``f(u) = cos(((u + s) / (1 + s)) * pi / 2) ** 2``,
        ``beta_i = min(1 - f((i + 1) / T) / f(i / T), max_beta)`` for ``i = 0 .. T-1``.
        ``f`` is evaluated with Python's ``math.cos`` in improved-diffusion's operation
        order, so the betas match that reference to the last bit. With the defaults the
        last beta is clipped to exactly ``max_beta``.

        Parameters
        ----------
        num_timesteps : int
            T >= 1.
        s : float
            Offset, finite and >= 0 (keeps beta_0 away from 0).
        max_beta : float
            Clip for the betas, in (0, 1].

        Returns
        -------
        NoiseSchedule

        Examples
        --------
        >>> s = NoiseSchedule.cosine(1000)
        >>> float(s.betas[-1])
        0.999
        >>> 4e-5 < float(s.betas[0]) < 5e-5
        True
        """
        T = _check_num_timesteps(num_timesteps)
        s = _check_real("s", s, 0, None, low_open=False)
        max_beta = _check_real("max_beta", max_beta, 0, 1, low_open=True)
        one_plus_s = 1 + s
        f = [math.cos((i / T + s) / one_plus_s * math.pi / 2) ** 2 for i in range(T + 1)]
        f = np.array(f, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            betas = np.minimum(1 - f[1:] / f[:-1], max_beta)
        try:
            return cls._from_betas(betas)
        except ValueError as exc:
            raise ValueError(
                f"cosine schedule with num_timesteps={T}, s={s!r} is degenerate in float64: {exc}"
            ) from None

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod):
        """A schedule from its cumulative products abar_t, which are stored exactly as given.

        ``beta_t = 1 - abar_t / abar_{t-1}`` with ``abar_{-1} = 1``. The given values
        become ``alphas_cumprod`` unchanged (as float64), not a re-derived cumprod of
        ``1 - betas``, so e.g. a last value of exactly 0 stays exactly 0 (and gives
        ``beta = 1``).

        Parameters
        ----------
        alphas_cumprod : array_like
            1-D, non-empty, finite, every entry in [0, 1), strictly decreasing.

        Returns
        -------
        NoiseSchedule

        Raises
        ------
        TypeError
            Complex, boolean or non-numeric ``alphas_cumprod``.
        ValueError
            Not 1-D, empty, non-finite, outside [0, 1) or not strictly decreasing.

        Examples
        --------
        >>> s = NoiseSchedule.from_alphas_cumprod([0.9, 0.45, 0.0])
        >>> [round(float(b), 12) for b in s.betas]
        [0.1, 0.5, 1.0]
        >>> s.alphas_cumprod.tolist()
        [0.9, 0.45, 0.0]
        """
        abar = _as_vector("alphas_cumprod", alphas_cumprod)
        _first_bad("alphas_cumprod", ~((abar >= 0.0) & (abar < 1.0)), abar, "be in [0, 1)")
        abar = abar + 0.0  # -0.0 -> +0.0
        not_decreasing = abar[1:] >= abar[:-1]
        if not_decreasing.any():
            i = int(np.argmax(not_decreasing)) + 1
            raise ValueError(
                f"alphas_cumprod must be strictly decreasing; alphas_cumprod[{i}] = {_fmt(abar[i])} "
                f">= alphas_cumprod[{i - 1}] = {_fmt(abar[i - 1])}"
            )
        abar_prev = np.concatenate(([1.0], abar[:-1]))  # > 0 wherever it divides: only the last abar can be 0
        betas = 1.0 - abar / abar_prev  # in (0, 1]: abar < abar_prev makes the ratio round below 1
        obj = cls.__new__(cls)
        obj._setup(_check_betas(betas), abar)
        return obj

    @classmethod
    def from_gammas(cls, gammas):
        """A schedule in signal-scale notation ``z_t = gamma_t z_{t-1} + sqrt(1 - gamma_t^2) eps``.

        ``beta_t = 1 - gamma_t ** 2``, evaluated as ``(1 - gamma)(1 + gamma)`` where
        ``gamma >= 0.5`` (no cancellation: error within about 2 ulp of the exact value).

        Parameters
        ----------
        gammas : array_like
            1-D, non-empty, finite, every entry in [0, 1) (``gamma = 0`` gives ``beta = 1``).

        Returns
        -------
        NoiseSchedule

        Examples
        --------
        >>> s = NoiseSchedule.from_gammas([0.99, 0.9, 0.0])
        >>> [round(float(b), 12) for b in s.betas]
        [0.0199, 0.19, 1.0]
        """
        g = _as_vector("gammas", gammas)
        _first_bad("gammas", ~((g >= 0.0) & (g < 1.0)), g, "be in [0, 1)")
        betas = np.where(g < 0.5, 1.0 - g * g, (1.0 - g) * (1.0 + g))
        return cls._from_betas(betas)

    def rescale_zero_terminal_snr(self):
        """A new schedule rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1).

        With ``a = sqrt(alphas_cumprod)``, ``a0 = a[0]`` and ``aT = a[-1]``:
        ``a = (a - aT) * (a0 / (a0 - aT))`` (the paper's operation order), then
        ``alphas_cumprod = a ** 2`` is passed to :meth:`from_alphas_cumprod`. So the new
        last ``alphas_cumprod`` is exactly 0.0 (last beta exactly 1, last SNR 0) and the
        first ``sqrt_alphas_cumprod`` is unchanged up to rounding. ``self`` is unchanged.

        Returns
        -------
        NoiseSchedule

        Raises
        ------
        ValueError
            ``num_timesteps == 1`` (the first and last step coincide, so the first
            value cannot be kept while the last becomes 0), or the rescaled values
            are not strictly decreasing in float64 (steps too small to resolve).

        Examples
        --------
        >>> s = NoiseSchedule.linear(1000).rescale_zero_terminal_snr()
        >>> float(s.alphas_cumprod[-1]), float(s.betas[-1]), float(s.snr[-1])
        (0.0, 1.0, 0.0)
        """
        if self._num_timesteps < 2:
            raise ValueError(
                "rescale_zero_terminal_snr needs num_timesteps >= 2; got num_timesteps = 1 "
                "(the only step cannot keep its signal level and reach zero SNR)"
            )
        a = np.sqrt(self._alphas_cumprod)
        a0, aT = a[0], a[-1]
        if not a0 > aT:
            raise ValueError("rescale_zero_terminal_snr needs alphas_cumprod[-1] < alphas_cumprod[0]")
        a = a - aT
        a = a * (a0 / (a0 - aT))
        abar = a**2
        ties = abar[1:] >= abar[:-1]
        if ties.any():
            i = int(np.argmax(ties)) + 1
            raise ValueError(
                "rescale_zero_terminal_snr: the rescaled alphas_cumprod are not strictly decreasing in "
                f"float64 at t = {i} ({_fmt(abar[i])} >= {_fmt(abar[i - 1])}); the schedule has steps "
                "too small to rescale"
            )
        return type(self).from_alphas_cumprod(abar)

    # ----------------------------------------------------------------- tables

    @property
    def num_timesteps(self):
        """T, the number of diffusion steps (an ``int``, equal to ``len(self)``)."""
        return self._num_timesteps

    betas = _readonly("_betas", "beta_t, float64 (T,), read-only, each in (0, 1].")
    alphas = _readonly("_alphas", "alpha_t = 1 - beta_t, float64 (T,), read-only.")
    alphas_cumprod = _readonly(
        "_alphas_cumprod",
        "abar_t = prod_{s<=t} alpha_s (or as given to from_alphas_cumprod), float64 (T,), read-only.",
    )
    alphas_cumprod_prev = _readonly(
        "_alphas_cumprod_prev", "abar_{t-1}, with abar_{-1} = 1 at t = 0, float64 (T,), read-only."
    )
    sqrt_alphas_cumprod = _readonly("_sqrt_alphas_cumprod", "sqrt(abar_t), float64 (T,), read-only.")
    sqrt_one_minus_alphas_cumprod = _readonly(
        "_sqrt_one_minus_alphas_cumprod", "sqrt(1 - abar_t), float64 (T,), read-only."
    )
    posterior_variance = _readonly(
        "_posterior_variance",
        "beta_t (1 - abar_{t-1}) / (1 - abar_t), the variance of q(x_{t-1} | x_t, x_0); "
        "exactly 0 at t = 0; float64 (T,), read-only.",
    )
    posterior_log_variance_clipped = _readonly(
        "_posterior_log_variance_clipped",
        "log(posterior_variance) with entry 0 replaced by entry 1 (improved-diffusion); "
        "[-inf] when T = 1; float64 (T,), read-only.",
    )
    posterior_mean_coef1 = _readonly(
        "_posterior_mean_coef1",
        "beta_t sqrt(abar_{t-1}) / (1 - abar_t), the x_0 coefficient of the posterior mean; "
        "float64 (T,), read-only.",
    )
    posterior_mean_coef2 = _readonly(
        "_posterior_mean_coef2",
        "(1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t), the x_t coefficient of the posterior mean; "
        "exactly 0 at t = 0; float64 (T,), read-only.",
    )
    snr = _readonly("_snr", "abar_t / (1 - abar_t), the signal-to-noise ratio; float64 (T,), read-only.")

    # ----------------------------------------------------------------- protocol

    def __len__(self):
        """T, the number of steps."""
        return self._num_timesteps

    def __repr__(self):
        b = self._betas
        if len(b) == 1:
            shown = f"{b[0]:.6g}"
        elif len(b) == 2:
            shown = f"{b[0]:.6g} {b[1]:.6g}"
        else:
            shown = f"{b[0]:.6g} ... {b[-1]:.6g}"
        return f"{type(self).__name__}(num_timesteps={self._num_timesteps}, betas=[{shown}])"

    def __eq__(self, other):
        """Equal when ``betas`` and ``alphas_cumprod`` have identical bytes."""
        if not isinstance(other, NoiseSchedule):
            return NotImplemented
        return self is other or (self._hash == other._hash and self._key == other._key)

    def __hash__(self):
        return self._hash

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable; cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable; cannot delete {name!r}")

    def __reduce__(self):
        return (_restore, (type(self), self._key[1], self._key[2]))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self
