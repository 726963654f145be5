"""The random stream, pinned: the exact first numbers a seed gives, as literals.

CHANGING ANY VALUE BELOW BREAKS EVERY USER'S REPRODUCIBILITY: a seed that gave these
numbers must give them in every release. A deliberate change of the stream (the key
derivation, Philox, the word-to-lane mapping, the uniform or Box-Muller constructions)
needs a new stream version: a documented version bump in fastgauss.random's docstring,
the README and the changelog, and new literals here, never an edit of these in place.

The literals were not produced by fastgauss: they come from the pure-Python
transcription of the normative stream definition below (``_stream``: Python integers,
``math.log``/``cos``/``sin``), and ``test_literals_follow_the_stream_definition``
keeps the two in agreement.
"""

import math

import numpy as np
import pytest

import fastgauss
from conftest import to_numpy

PINNED = {
    0: {
        "key": 0xDB2CD7E7B0F478BE,
        "standard_normal float32": [-1.8954734802246094, -0.7820404767990112, 0.7395830750465393, -0.8273339867591858, -0.29867449402809143, -0.276657372713089],
        "standard_normal float64": [-1.9852569571173866, -0.5129924171654097, -0.1883516862550639, 0.36092853103953504, 0.06747995486497646, -0.4500364823845772],
        "random float32": [0.12218683958053589, 0.5622783899307251, 0.5402450561523438, 0.8660962581634521, 0.9204680919647217, 0.6189123392105103],
        "random float64": [0.12218689592390075, 0.5402450924075861, 0.9204681263783004, 0.32654976598769103, 0.9016372934446378, 0.7736873761017363],
    },
    42: {
        "key": 0x9F1E2E6DCD540AB7,
        "standard_normal float32": [1.7514621019363403, 0.7936797142028809, -0.9801290035247803, -2.181643486022949, 0.28498926758766174, 1.0149716138839722],
        "standard_normal float64": [1.799780480244297, 0.6770099066717538, 0.04345245975920722, 1.0533274955893388, -0.5139677262460047, 0.9619694995962936],
        "random float32": [0.15743011236190796, 0.06771606206893921, 0.0572623610496521, 0.682798445224762, 0.5736744403839111, 0.20643341541290283],
        "random float64": [0.15743012031701265, 0.05726241829096146, 0.5736744791748632, 0.24343798940943795, 0.551686867343212, 0.32809720776112505],
    },
    20261125: {
        "key": 0x25095D381029A510,
        "standard_normal float32": [-1.0500112771987915, 1.1293790340423584, 0.6314221620559692, -0.12477656453847885, 0.23961341381072998, 1.2955797910690308],
        "standard_normal float64": [0.5938243077332416, -1.423163791935223, 1.2106293637575793, 0.5199224527226308, -0.0758114838964897, 0.43505952814779264],
        "random float32": [0.30452245473861694, 0.3692065477371216, 0.81291264295578, 0.9689491391181946, 0.41980254650115967, 0.22089368104934692],
        "random float64": [0.3045225096434845, 0.8129126799773362, 0.41980257794926834, 0.06456085561940761, 0.9070914946223788, 0.2774580225925516],
    },
}

# Seed 7 from counter 2**32 - 1: the first block's counter carries into the second word.
CARRY_SEED, CARRY_COUNTER, CARRY_KEY = 7, 2**32 - 1, 0xEAD0F7017C326E58
CARRY = {
    "standard_normal float32": [1.2644519805908203, 1.156081199645996, 0.6712927222251892, -0.09539973735809326, -0.0631314143538475, -0.780424952507019, -1.565185308456421, -1.1423308849334717],
    "random float64": [0.23045922903626548, 0.7946389017815324, 0.7360006029691799, 0.15299308002250434],
}

# Normals of the compiled backends use vectorizable log/sincos (fastgauss.random's
# docstring): within these of the exact values, relative to max(1, |z|). Uniforms and
# the reference's normals are exact.
NORMAL_TOLERANCE = {"numpy": {"float32": 0.0, "float64": 1e-15}, "compiled": {"float32": 1e-6, "float64": 1e-14}}


# --- the stream definition, transcribed independently of fastgauss ----------------------

MASK = 0xFFFFFFFF


def _philox(counter, key):
    c0, c1, c2, c3 = ((counter >> (32 * i)) & MASK for i in range(4))
    k0, k1 = key & MASK, key >> 32
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
    return c0, c1, c2, c3


def _f32(x):
    return float(np.float32(x))


def _stream(method, dtype, key, counter, count):
    """Elements 0..count-1 of a call, from the normative text in fastgauss.random."""
    per_block = 4 if dtype == "float32" else 2
    values = []
    for i in range(count):
        w = _philox((counter + i // per_block) % 2**128, key)
        lane = i % per_block
        if method == "random" and dtype == "float32":
            values.append(_f32((w[lane] >> 8) * 2.0**-24))
        elif method == "random":
            a, b = w[2 * lane], w[2 * lane + 1]
            values.append(((a >> 5) * 2.0**26 + (b >> 6)) * 2.0**-53)
        elif dtype == "float32":
            a, b = w[lane // 2 * 2], w[lane // 2 * 2 + 1]
            u = _f32(_f32((a >> 1) * 2.0**-31) + 2.0**-32)
            turn = _f32((b >> 8) * 2.0**-24)
            radius = math.sqrt(-2.0 * math.log(u))
            values.append(_f32(radius * (math.cos if lane % 2 == 0 else math.sin)(2 * math.pi * turn)))
        else:
            u = ((w[0] >> 11) * 2.0**32 + w[1]) * 2.0**-53 + 2.0**-54
            turn = ((w[2] >> 11) * 2.0**32 + w[3]) * 2.0**-53
            radius = math.sqrt(-2.0 * math.log(u))
            values.append(radius * (math.cos if lane == 0 else math.sin)(2 * math.pi * turn))
    return values


def _key(seed):
    low, high = (int(w) for w in np.random.SeedSequence(seed).generate_state(2, np.uint32))
    return low | high << 32


def test_literals_follow_the_stream_definition():
    for seed, pinned in PINNED.items():
        assert _key(seed) == pinned["key"]
        for label, values in pinned.items():
            if label != "key":
                method, dtype = label.split()
                assert _stream(method, dtype, pinned["key"], 0, len(values)) == values, (seed, label)
    assert _key(CARRY_SEED) == CARRY_KEY
    for label, values in CARRY.items():
        method, dtype = label.split()
        assert _stream(method, dtype, CARRY_KEY, CARRY_COUNTER, len(values)) == values, label


def _check(got, expected, method, dtype, backend):
    got = to_numpy(got).astype(np.float64)
    if method == "random":
        assert got.tolist() == expected  # bitwise on every backend
        return
    tolerance = NORMAL_TOLERANCE["numpy" if backend == "numpy" else "compiled"][dtype]
    error = np.abs(got - expected) / np.maximum(1.0, np.abs(expected))
    assert error.max() <= tolerance, (method, dtype, backend, error.max())


@pytest.mark.parametrize("seed", sorted(PINNED))
def test_a_seed_gives_the_pinned_key_and_numbers(backend, seed):
    pinned = PINNED[seed]
    assert fastgauss.default_rng(seed).state["key"] == pinned["key"]
    for label, expected in pinned.items():
        if label == "key":
            continue
        method, dtype = label.split()
        rng = fastgauss.default_rng(seed)
        _check(getattr(rng, method)(len(expected), dtype=dtype, backend=backend), expected, method, dtype, backend)


def test_the_pinned_numbers_after_a_counter_carry(backend):
    for label, expected in CARRY.items():
        method, dtype = label.split()
        rng = fastgauss.default_rng(CARRY_SEED)
        rng.state = {"bit_generator": "Philox4x32-10", "key": CARRY_KEY, "counter": CARRY_COUNTER}
        _check(getattr(rng, method)(len(expected), dtype=dtype, backend=backend), expected, method, dtype, backend)
