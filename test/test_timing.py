"""The execution-time model: exact sums, least-squares recovery, error metric."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from timebill_ros.core.timing import TimingModel, fit_decode, fit_prefill, mape

MODEL = TimingModel(a=2e-8, b=3e-5, c=0.01, p=4e-6, q=0.02)


@given(
    n_x=st.integers(1, 8192),
    alpha=st.floats(0.0, 0.95),
    n=st.integers(0, 600),
)
def test_closed_form_decode_equals_the_step_by_step_sum(n_x, alpha, n):
    # N tokens: the first comes out of prefill, then steps i = 1..N-1 at N_kv = (1-alpha)N_x + i - 1.
    explicit = sum(MODEL.decode_step((1 - alpha) * n_x + i - 1) for i in range(1, n))
    assert MODEL.decode(n_x, alpha, n) == pytest.approx(explicit, rel=1e-9, abs=1e-12)


def test_exact_values():
    assert MODEL.prefill(100) == pytest.approx(2e-8 * 1e4 + 3e-5 * 100 + 0.01)
    # 3 tokens -> 2 steps at N_kv = 50 and 51 (alpha 0.5 of 100).
    assert MODEL.decode(100, 0.5, 3) == pytest.approx((4e-6 * 50 + 0.02) + (4e-6 * 51 + 0.02))
    assert MODEL.decode(100, 0.5, 1) == 0.0
    assert MODEL.end_to_end(100, 0.0, 2) == pytest.approx(MODEL.prefill(100) + MODEL.decode_step(100))
    assert MODEL.goal_time(100, 0.5, 3) == pytest.approx(MODEL.prefill(100) + MODEL.evict(100, 0.5)
                                                        + MODEL.decode(100, 0.5, 3))


def test_least_squares_recovers_known_coefficients():
    n = np.linspace(16, 2048, 20)
    a, b, c = fit_prefill(n, MODEL.a * n**2 + MODEL.b * n + MODEL.c)
    p, q = fit_decode(n, MODEL.p * n + MODEL.q)
    assert (a, b, c) == pytest.approx((MODEL.a, MODEL.b, MODEL.c), rel=1e-6)
    assert (p, q) == pytest.approx((MODEL.p, MODEL.q), rel=1e-6)


def test_mape_is_in_percent():
    assert mape([110, 90], [100, 100]) == pytest.approx(10.0)


def test_worst_overrun():
    from timebill_ros.core.timing import worst_overrun

    assert worst_overrun([1.0, 2.0], [1.1, 1.0]) == pytest.approx(0.1)
    assert worst_overrun([1.0, 2.0], [0.9, 1.0]) == 0.0


def test_fit_never_lets_time_fall_with_length():
    # Noisy, nearly linear samples whose unconstrained fit has a negative N^2 term.
    n = np.array([16.0, 64.0, 128.0])
    seconds = np.array([0.00055, 0.00080, 0.00102])
    unconstrained = np.linalg.lstsq(np.stack([n * n, n, np.ones_like(n)], 1), seconds, rcond=None)[0]
    assert unconstrained[0] < 0
    a, b, c = fit_prefill(n, seconds)
    assert a >= 0 and b >= 0 and c >= 0
    model = TimingModel(a, b, c, 0, 0)
    assert model.prefill(4096) >= model.prefill(128) > 0


def test_bounding_margins_cover_every_sample_and_one_short_outlier_does_not_scale_all():
    from timebill_ros.core.timing import bounding_margins

    lengths = [16, 256, 512, 1024, 2048]
    predicted = [0.001, 0.1, 0.2, 0.4, 0.8]
    measured = [0.003, 0.1, 0.21, 0.42, 0.8]  # the 16-token sample is 3x its fit, by 2 ms
    r, d = bounding_margins(lengths, predicted, measured)
    assert r == pytest.approx(0.05) and d == pytest.approx(0.003 - 0.001 * 1.05)
    assert all(p * (1 + r) + d >= m - 1e-12 for p, m in zip(predicted, measured))
    assert 0.8 * (1 + r) + d < 0.8 * 3  # a ratio over every sample would have tripled the plan
