"""The planner: monotone in the budget, honest, and the latency model's arithmetic."""

from __future__ import annotations

from service.planner import LatencyModel, QueueState, choose_depth, predict_ms


def model() -> LatencyModel:
    m = LatencyModel([1, 2, 3, 4], [1, 2, 4, 8])
    for d in (1, 2, 3, 4):
        for b in (1, 2, 4, 8):
            m.observe(d, b, d * (1.0 + 0.25 * b))
    return m


def test_larger_budget_never_gives_a_shallower_depth() -> None:
    m = model()
    for pending in ({}, {2: 3}, {1: 8, 4: 2}):
        q = QueueState(pending=pending, inflight_remaining_ms=1.5, idle=not pending)
        depths = [
            choose_depth(m, [1, 2, 3, 4], b / 4, 1, q, 2.0, 0.3, 0.5).exit_depth
            for b in range(1, 400)
        ]
        assert depths == sorted(depths)
        assert depths[0] == 1 and depths[-1] == 4


def test_plan_is_honest() -> None:
    m = model()
    q = QueueState(pending={3: 2}, inflight_remaining_ms=2.0, idle=False)
    for budget in (0.1, 1, 5, 10, 20, 100):
        plan = choose_depth(m, [1, 2, 3, 4], budget, 1, q, 2.0, 0.0, 0.0)
        if plan.fits:
            assert plan.predicted_ms <= budget
        else:
            assert plan.exit_depth == 1


def test_prediction_counts_the_work_ahead() -> None:
    m = model()
    idle = QueueState(pending={}, inflight_remaining_ms=0.0, idle=True)
    busy = QueueState(pending={1: 4, 2: 1}, inflight_remaining_ms=3.0, idle=False)
    # idle: the batch wait (2) + compute of depth 2, batch 1 (2 * 1.25 = 2.5, deviation 0.25)
    assert predict_ms(m, 2, 1, idle, 2.0, 0.0, 0.0) == 2.0 + 2.5 + 2 * 0.25
    p = predict_ms(m, 2, 1, busy, 2.0, 0.0, 0.0)
    expected = 3.0 + m.predict(1, 4) + m.predict(2, 2)
    assert abs(p - expected) < 1e-9


def test_latency_model_updates_online_and_chunks_large_batches() -> None:
    m = LatencyModel([1], [1, 8])
    m.observe(1, 8, 10.0)
    first = m.predict(1, 8)
    for _ in range(30):
        m.observe(1, 8, 20.0)
    assert m.predict(1, 8) > first and abs(m.predict(1, 8) - 20.0) < 1.0
    assert m.predict(1, 16) == 2 * m.predict(1, 8)
    assert m.predict(1, 3) == m.predict(1, 8)  # covered by the 8-bucket
