"""Learning-rate schedules against their formulas at chosen points."""
import math

import pytest

from npmobilenet.training.schedule import ConstantLR, CosineLR, ExponentialLR, StepLR


def test_constant():
    s = ConstantLR(0.1)
    assert s.unit == "epoch"
    assert [s.lr_at(e) for e in (0, 5, 99)] == [0.1, 0.1, 0.1]


def test_step():
    s = StepLR(0.1, step_epochs=3, gamma=0.5)
    assert [s.lr_at(e) for e in range(7)] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])


def test_exponential_v2_paper_decay():
    s = ExponentialLR(0.045, 0.98)  # V2 paper, section 6.1
    assert s.lr_at(0) == 0.045
    assert s.lr_at(10) == pytest.approx(0.045 * 0.98**10)


def test_cosine_with_warmup_points():
    s = CosineLR(1.0, total_steps=110, warmup_steps=10, min_lr=0.0)
    assert s.unit == "step"
    # warm-up: linear, first step already non-zero, peak reached at step `warmup`
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(4) == pytest.approx(0.5)
    assert s.lr_at(9) == pytest.approx(1.0)
    assert s.lr_at(10) == pytest.approx(1.0)
    # half way through the cosine part: (1 + cos(pi/2)) / 2 = 0.5
    assert s.lr_at(60) == pytest.approx(0.5)
    assert s.lr_at(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert 0 < s.lr_at(109) < 1e-3
    lrs = [s.lr_at(t) for t in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone after warm-up


def test_cosine_from_epochs_and_min_lr():
    s = CosineLR.from_epochs(0.2, epochs=5, steps_per_epoch=20, warmup_epochs=1, min_lr=0.01)
    assert (s.total_steps, s.warmup_steps) == (100, 20)
    assert s.lr_at(10_000) == pytest.approx(0.01)  # past the end: stays at the floor


def test_bad_arguments():
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineLR(0.1, total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="step_epochs"):
        StepLR(0.1, 0)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        ConstantLR(0.1).lr_at(-1)
