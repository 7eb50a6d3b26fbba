"""Each optimizer against its textbook equations on a hand-worked two-step example.

Two scalar parameters: `w` (weight decay applies) starting at 1.0, and `b` (decay=False, like a
bias or batch-norm parameter) starting at 2.0. Both receive the gradient 0.5 at step 1 and -0.25
at step 2. The expected values are worked out below, line by line from the equations in each
optimizer's docstring; the optimizer is only run to be compared with them.
"""
import math

import numpy as np
import pytest

from npmobilenet.layers.base import Parameter
from npmobilenet.training.optim import SGD, AdamW, RMSprop, make_optimizer

GRADS = (0.5, -0.25)


def run_two_steps(optimizer_class, **kwargs):
    w = Parameter(np.array([1.0]))
    b = Parameter(np.array([2.0]), decay=False)
    opt = optimizer_class([("w", w), ("b", b)], **kwargs)
    trace = []
    for g in GRADS:
        w.grad[...] = g
        b.grad[...] = g
        opt.step()
        trace.append((float(w.data[0]), float(b.data[0])))
    return trace, opt


def test_sgd_momentum():
    trace, _ = run_two_steps(SGD, lr=0.1, momentum=0.9, weight_decay=0.01)
    # w, step 1: g = 0.5 + 0.01 * 1.0 = 0.51;  v = 0.51;  w = 1 - 0.1 * 0.51 = 0.949
    # w, step 2: g = -0.25 + 0.01 * 0.949 = -0.24051;  v = 0.9 * 0.51 - 0.24051 = 0.21849
    #            w = 0.949 - 0.1 * 0.21849 = 0.927151
    # b (no decay): v = 0.5, b = 1.95;  v = 0.45 - 0.25 = 0.2, b = 1.95 - 0.02 = 1.93
    assert trace[0] == pytest.approx((0.949, 1.95), abs=1e-12)
    assert trace[1] == pytest.approx((0.927151, 1.93), abs=1e-12)


def test_sgd_nesterov():
    trace, _ = run_two_steps(SGD, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    # step 1: g = 0.51, v = 0.51, step = g + 0.9 v = 0.969, w = 1 - 0.0969 = 0.9031
    # step 2: g = -0.25 + 0.009031 = -0.240969, v = 0.459 - 0.240969 = 0.218031
    #         step = -0.240969 + 0.9 * 0.218031 = -0.0447411, w = 0.9031 + 0.00447411 = 0.90757411
    # b: v = 0.5, step 0.95, b = 1.905;  v = 0.2, step = -0.25 + 0.18 = -0.07, b = 1.912
    assert trace[0] == pytest.approx((0.9031, 1.905), abs=1e-12)
    assert trace[1] == pytest.approx((0.90757411, 1.912), abs=1e-12)


def test_sgd_decay_bn_and_bias_when_asked():
    trace, _ = run_two_steps(SGD, lr=0.1, momentum=0.0, weight_decay=0.1, decay_bn_and_bias=True)
    # b: g = 0.5 + 0.1 * 2 = 0.7, b = 2 - 0.07 = 1.93
    assert trace[0][1] == pytest.approx(1.93, abs=1e-12)


def test_rmsprop_tensorflow_form():
    trace, opt = run_two_steps(RMSprop, lr=0.1, decay=0.9, momentum=0.9, eps=0.01, weight_decay=0.01)
    # mean square starts at 1 (TF 1); eps inside the square root; lr inside the momentum.
    # w, step 1: g = 0.51;  ms = 0.9 * 1 + 0.1 * 0.51**2 = 0.926010
    #            m = 0.1 * 0.51 / sqrt(0.936010) = 0.051 / 0.967476 = 0.0527145;  w = 0.9472855
    g1 = 0.51
    ms1 = 0.9 + 0.1 * g1**2
    m1 = 0.1 * g1 / math.sqrt(ms1 + 0.01)
    w1 = 1.0 - m1
    assert ms1 == pytest.approx(0.92601)
    assert m1 == pytest.approx(0.0527145, abs=1e-7)
    # w, step 2: g = -0.25 + 0.01 * w1;  ms = 0.9 ms1 + 0.1 g**2;  m = 0.9 m1 + 0.1 g / sqrt(ms + 0.01)
    g2 = -0.25 + 0.01 * w1
    ms2 = 0.9 * ms1 + 0.1 * g2**2
    m2 = 0.9 * m1 + 0.1 * g2 / math.sqrt(ms2 + 0.01)
    w2 = w1 - m2
    # b (no decay): ms = 0.925, m = 0.05 / sqrt(0.935); ms = 0.8325 + 0.00625 = 0.83875, ...
    mb1 = 0.1 * 0.5 / math.sqrt(0.925 + 0.01)
    mb2 = 0.9 * mb1 + 0.1 * -0.25 / math.sqrt(0.83875 + 0.01)
    assert trace[0] == pytest.approx((w1, 2.0 - mb1), abs=1e-12)
    assert trace[1] == pytest.approx((w2, 2.0 - mb1 - mb2), abs=1e-12)
    assert w2 == pytest.approx(0.9259437, abs=1e-6)  # g2 = -0.2405271, ms2 = 0.8391943, m2 = 0.0213418
    assert opt.state["mean_square"]["b"][0] == pytest.approx(0.83875)


def test_rmsprop_eps_is_inside_the_root():
    # With ms starting at 0 and one step of g = 1: TF gives lr * g / sqrt(0.1 + eps),
    # PyTorch would give lr * g / (sqrt(0.1) + eps). eps = 0.9 makes the difference plain.
    p = Parameter(np.array([0.0]))
    opt = RMSprop([p], lr=1.0, decay=0.9, momentum=0.0, eps=0.9, initial_mean_square=0.0)
    p.grad[...] = 1.0
    opt.step()
    assert p.data[0] == pytest.approx(-1.0 / math.sqrt(0.1 + 0.9))  # = -1.0 exactly


def test_adamw_decoupled():
    trace, _ = run_two_steps(AdamW, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    # step 1: m = 0.05, v = 0.00025; m_hat = 0.5, v_hat = 0.25 -> update 0.5 / (0.5 + 1e-8)
    #         w = 1 - 0.1 * (0.99999998 + 0.01 * 1.0) = 0.899000002
    u1 = 0.5 / (0.5 + 1e-8)
    w1 = 1.0 - 0.1 * (u1 + 0.01 * 1.0)
    assert w1 == pytest.approx(0.899000002, abs=1e-12)
    # step 2: m = 0.045 - 0.025 = 0.02, v = 0.999 * 0.00025 + 0.001 * 0.0625 = 0.00031225
    #         m_hat = 0.02 / 0.19, v_hat = 0.00031225 / 0.001999
    m_hat = 0.02 / (1 - 0.9**2)
    v_hat = 0.00031225 / (1 - 0.999**2)
    u2 = m_hat / (math.sqrt(v_hat) + 1e-8)
    w2 = w1 - 0.1 * (u2 + 0.01 * w1)
    # b: no decay term at all (decoupled decay exempt), Adam part identical
    b1 = 2.0 - 0.1 * u1
    b2 = b1 - 0.1 * u2
    assert trace[0] == pytest.approx((w1, b1), abs=1e-12)
    assert trace[1] == pytest.approx((w2, b2), abs=1e-12)
    assert u2 == pytest.approx(0.266337, abs=1e-6)  # 0.1052632 / sqrt(0.1562031)


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adamw"])
def test_state_dict_round_trip_continues_identically(name):
    rng = np.random.default_rng(0)

    def fresh():
        return [("a", Parameter(np.ones((3, 2), np.float32))), ("b", Parameter(np.zeros(2, np.float32), decay=False))]

    grads = [[rng.standard_normal(p.shape).astype(np.float32) for _, p in fresh()] for _ in range(4)]
    params = fresh()
    opt = make_optimizer(name, params, lr=0.01, weight_decay=1e-2)

    def step(optimizer, ps, gs):
        for (_, p), g in zip(ps, gs):
            p.grad[...] = g
        optimizer.step()

    for gs in grads[:2]:
        step(opt, params, gs)
    state = opt.state_dict()
    assert all(isinstance(v, (np.ndarray, int, float, str)) for v in state.values())
    params2 = [(n, Parameter(p.data.copy(), p.decay)) for n, p in params]
    opt2 = make_optimizer(name, params2, lr=0.5, weight_decay=1e-2)
    opt2.load_state_dict(state)
    assert opt2.lr == 0.01 and opt2.steps == 2
    for gs in grads[2:]:
        step(opt, params, gs)
        step(opt2, params2, gs)
    for (_, p), (_, q) in zip(params, params2):
        assert np.array_equal(p.data, q.data)


def test_load_state_dict_names_mismatches():
    opt = SGD([("w", Parameter(np.ones(3)))], lr=0.1)
    other = SGD([("w", Parameter(np.ones(4))), ("extra", Parameter(np.ones(1)))], lr=0.1)
    with pytest.raises(ValueError, match=r"unexpected: momentum/extra.*shape mismatches: momentum/w"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="state is for AdamW, not SGD"):
        opt.load_state_dict(AdamW([("w", Parameter(np.ones(3)))]).state_dict())


def test_bad_hyper_parameters():
    p = [Parameter(np.ones(1))]
    with pytest.raises(ValueError, match="lr must be > 0"):
        SGD(p, lr=0)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(p, lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("lbfgs", p, lr=0.1)
    with pytest.raises(ValueError, match="no parameters"):
        SGD([], lr=0.1)
