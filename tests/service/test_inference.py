"""service/inference on its own: the planner's arithmetic, robust tails, the batcher with a
plain function as its engine, and the scheduler's choices (no model, no server)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.inference import Mode, Overloaded, Scheduler
from service.inference.batcher import Batcher
from service.inference.latency import LatencyModel, tail
from service.inference.planner import Pads, QueueState, choose_depth, estimate
from service.inference.retime import Retimer

ALL = "all"


def model(keys=(1, 2, 3, 4, ALL)) -> LatencyModel:
    """Depth d at batch b costs d * (1 + b / 4) ms, exactly (all exits: as depth 5)."""
    m = LatencyModel(list(keys), [1, 2, 4, 8])
    for d in keys:
        for b in (1, 2, 4, 8):
            for _ in range(3):
                m.observe(d, b, (5 if d == ALL else d) * (1.0 + 0.25 * b))
    return m


IDLE = QueueState(pending={}, inflight_remaining_ms=0.0, company=False)


def test_tail_is_a_high_quantile_that_one_outlier_cannot_move() -> None:
    xs = [1.0] * 99 + [500.0]
    assert tail(xs) == 1.0  # the single largest is ignored
    assert tail([1.0] * 98 + [400.0, 500.0]) == 400.0  # two are a tail, not an outlier
    assert tail([3.0, 1.0, 2.0]) == 3.0  # few samples: the largest (conservative)
    assert tail(range(1000)) == 990  # the 99th percentile of a long window
    assert tail([]) == 0.0


def test_one_stalled_batch_moves_neither_prediction() -> None:
    m = LatencyModel([1], [1])
    for _ in range(20):
        m.observe(1, 1, 2.0)
    m.observe(1, 1, 300.0)  # a SIGSTOP mid-compute: a mean would say 16.2 ms
    assert m.predict(1, 1, tail=False) == 2.0 and m.predict(1, 1) == 2.0


def test_latency_model_predicts_per_bucket_and_chunks_large_batches() -> None:
    m = model()
    assert m.predict(2, 1) == 2 * 1.25
    assert m.predict(2, 3) == m.predict(2, 4)  # covered by the 4-bucket
    assert m.predict(2, 16) == 2 * m.predict(2, 8)
    lone = LatencyModel([1], [1, 4])
    lone.observe(1, 1, 2.0)
    assert lone.predict(1, 4) == 8.0  # unmeasured bucket: the smaller one, scaled
    assert LatencyModel([1], [1]).predict(1, 1) == float("inf")


def test_estimate_adds_the_parts() -> None:
    m = model()
    busy = QueueState(pending={1: 4, 2: 1}, inflight_remaining_ms=3.0, company=True)
    pads = Pads(remaining_ms=0.75)
    e = estimate(model=m, key=2, n=1, queue=busy, elapsed_ms=1.0, max_wait_ms=2.0, pads=pads)
    assert e.wait_ms == 3.0 + m.predict(1, 4) + 2.0  # running + other queue + company wait
    assert e.compute_ms == m.predict(2, 2)  # joins the queued depth-2 batch
    assert e.total_ms == pytest.approx(1.0 + e.wait_ms + e.compute_ms + 0.75)
    m.observe(2, 1, 100.0)  # one slow batch among few: the tail moves, the median hardly
    typical = estimate(model=m, key=2, n=1, queue=IDLE, elapsed_ms=0.0, max_wait_ms=0.0,
                       pads=Pads())  # fmt: skip
    cautious = estimate(model=m, key=2, n=1, queue=IDLE, elapsed_ms=0.0, max_wait_ms=0.0,
                        pads=Pads(compute_tail=True))  # fmt: skip
    assert typical.compute_ms == m.predict(2, 1, tail=False) < cautious.compute_ms
    idle = estimate(model=m, key=2, n=1, queue=IDLE, elapsed_ms=0.0, max_wait_ms=2.0,
                    pads=Pads())  # fmt: skip
    assert idle.total_ms == m.predict(2, 1, tail=False)  # alone: no wait for company


def test_choice_is_monotone_in_the_budget_and_honest() -> None:
    m = model()
    for queue in (IDLE, QueueState({2: 3}, 1.5, True), QueueState({1: 8, 4: 2}, 0.0, True)):
        depths = []
        for budget in np.linspace(0.1, 100, 400):
            est, fits = choose_depth(
                model=m, exit_depths=[1, 2, 3, 4], budget_ms=budget, n=1, queue=queue,
                elapsed_ms=0.3, max_wait_ms=2.0, pads=Pads(),
            )  # fmt: skip
            assert (est.total_ms <= budget) == fits and (fits or est.key == 1)
            depths.append(est.key)
        assert depths == sorted(depths) and depths[0] == 1 and depths[-1] == 4


def run(coro):
    return asyncio.run(coro)


def test_batcher_forms_batches_while_requests_are_on_their_way() -> None:
    calls: list[tuple[object, int]] = []

    def engine(key, images):  # a plain function: the batch's row sums
        calls.append((key, len(images)))
        time.sleep(0.01)
        return images.reshape(len(images), -1).sum(1, keepdims=True).astype(np.float32)

    async def scenario():
        b = Batcher(engine, model(), max_batch=8, max_wait_ms=50, queue_bound=64)
        b.upstream = 6  # six admitted requests on their way
        b.start()

        async def one(i):
            await asyncio.sleep(0.001 * i)
            b.upstream -= 1
            return await b.submit(1, np.full((1, 2), i, np.uint8))

        out = await asyncio.gather(*(one(i) for i in range(6)))
        await b.close()
        return out

    out = run(scenario())
    assert calls == [(1, 6)]  # one batch: the batcher waited for the six
    assert [float(r.rows[0, 0]) for r in out] == [2.0 * i for i in range(6)]
    assert all(r.batch_size == 6 and r.started >= r.enqueued for r in out)


def test_batcher_refuses_past_its_bound_and_survives_a_failing_batch() -> None:
    def engine(key, images):
        if key == "boom":
            raise RuntimeError("engine failure")
        time.sleep(0.05)
        return np.zeros((len(images), 1), np.float32)

    async def scenario():
        m = model()
        for _ in range(3):  # what this engine costs: a batch runs on the worker's thread
            m.observe(1, 4, 50.0)
        b = Batcher(engine, m, max_batch=4, max_wait_ms=0, queue_bound=4)
        b.start()
        first = asyncio.create_task(b.submit(1, np.zeros((4, 1), np.uint8)))
        await asyncio.sleep(0.01)  # running; the queue is empty again
        queued = asyncio.create_task(b.submit(2, np.zeros((4, 1), np.uint8)))
        await asyncio.sleep(0.005)
        with pytest.raises(Overloaded):
            await b.submit(3, np.zeros((1, 1), np.uint8))
        done = await asyncio.gather(first, queued)
        with pytest.raises(RuntimeError, match="engine failure"):
            await b.submit("boom", np.zeros((1, 1), np.uint8))
        after = await b.submit(1, np.zeros((1, 1), np.uint8))  # the worker is still alive
        await b.close()
        return done, after

    done, after = run(scenario())
    assert [d.batch_size for d in done] == [4, 4] and after.batch_size == 1


def scheduler(engine, mode=Mode.COMPONENTS) -> Scheduler:
    return Scheduler(engine, model(), [1, 2, 3, 4], ALL, max_batch=8, max_wait_ms=1.0,
                     queue_bound=64, calibration=mode)  # fmt: skip


def sleeping_engine(key, images):
    """Depth d costs d ms (all exits: 5 ms), like the latency table says (roughly)."""
    time.sleep((5 if key == ALL else key) / 1000)
    depth = 4 if key == ALL else key
    out = np.full((len(images), 3), depth, np.float32)
    return np.stack([out] * 4) if key == ALL else out


def test_scheduler_serves_the_deepest_depth_that_fits_and_never_lowers_a_fixed_one() -> None:
    async def scenario():
        s = scheduler(sleeping_engine)
        s.start()
        images = np.zeros((1, 2, 2, 3), np.uint8)
        results = {}
        for name, kw in {"tight": {"budget_ms": 3.2}, "roomy": {"budget_ms": 500.0},
                         "impossible": {"budget_ms": 0.01}, "fixed": {"exit_depth": 2},
                         "deepest": {}, "all": {"all_exits": True}}.items():  # fmt: skip
            served = await s.run(images, admission=s.admit(time.perf_counter()), route="r",
                                 **kw)  # fmt: skip
            results[name] = (served, s.answered(served, route="r"))
        await s.close()
        return results

    r = run(scenario())
    assert r["roomy"][0].exit_depth == 4 and r["roomy"][1]["budget_met"] is True
    # model(): depth 2 alone costs 2.5 ms, depth 3 costs 3.75: a 3.2 ms budget (0.7 ms for the
    # time since arrival, on a busy machine too), asked first
    # (before any batch or answer has taught the scheduler more), gets depth 2
    assert r["tight"][0].exit_depth == 2 and r["tight"][0].fits
    assert r["impossible"][0].exit_depth == 1 and r["impossible"][1]["budget_met"] is False
    assert r["fixed"][0].exit_depth == 2 and r["fixed"][1]["budget_met"] is None
    assert r["deepest"][0].exit_depth == 4
    assert r["all"][0].exit_depth is None and r["all"][0].output.shape == (4, 1, 3)
    for served, timing in r.values():
        assert timing["elapsed_ms"] > 0 and timing["predicted_ms"] == round(served.predicted_ms, 3)


def test_admitted_requests_are_the_company_the_batcher_waits_for() -> None:
    async def scenario():
        s = scheduler(sleeping_engine)
        s.start()
        admissions = [s.admit(time.perf_counter()) for _ in range(3)]
        assert s.batcher.upstream == 3 and s.batcher.state().company
        images = np.zeros((1, 2, 2, 3), np.uint8)
        runs = [s.run(images, admission=a, route="r", exit_depth=1) for a in admissions]
        served = await asyncio.gather(*runs)
        assert s.batcher.upstream == 0
        await s.close()
        return served

    served = run(scenario())
    assert {x.ran.batch_size for x in served} == {3}  # they ran together


SEGMENTS = ["s1", "s2", "s3", "s4"]


def segment_engine(cost_s: float):
    """A plain segment function: each block adds 1 to the hidden state and costs ``cost_s``;
    the embedding is the number of blocks done (so a row tells its depth)."""

    def run_segment(segment, hidden):
        time.sleep(cost_s)
        h = (hidden if hidden.dtype != np.uint8 else np.zeros((len(hidden), 2), np.float32)) + 1
        return h, h[:, :1].copy()

    return run_segment


def segment_batcher(cost_s: float, exit_depths=None) -> Batcher:
    m = LatencyModel(SEGMENTS, [1, 2, 4, 8])
    for s in SEGMENTS:
        for b in (1, 2, 4, 8):
            m.observe(s, b, 1000 * cost_s)
    return Batcher(sleeping_engine, m, max_batch=8, max_wait_ms=0, queue_bound=64,
                   run_segment=segment_engine(cost_s), segments=SEGMENTS,
                   exit_depths=exit_depths)  # fmt: skip


def test_riders_leave_at_their_own_deadlines() -> None:
    async def scenario():
        b = segment_batcher(0.02)
        b.start()
        now = time.perf_counter()
        image = np.zeros((1, 2, 2, 3), np.uint8)
        tight, roomy = await asyncio.gather(
            b.submit_anytime(image, deadline=now + 0.05, reserve_s=0.0),
            b.submit_anytime(image, deadline=now + 5.0, reserve_s=0.0),
        )
        await b.close()
        return tight, roomy

    tight, roomy = run(scenario())
    # blocks of 20 ms and a 50 ms deadline: after two, a third would end too late
    assert tight.exit_depth == 2 and tight.fits and tight.decided <= tight.enqueued + 0.05
    assert float(tight.rows[0, 0]) == tight.exit_depth  # the embedding of the depth it reports
    assert roomy.exit_depth == 4 and float(roomy.rows[0, 0]) == 4
    assert tight.batch_size == roomy.batch_size == 2  # they rode together


def test_a_tight_request_does_not_wait_for_a_deep_batch() -> None:
    async def scenario():
        b = segment_batcher(0.03)
        b.start()
        image = np.zeros((1, 2, 2, 3), np.uint8)
        deep = asyncio.create_task(
            b.submit_anytime(image, deadline=time.perf_counter() + 10, reserve_s=0)
        )
        await asyncio.sleep(0.04)  # the deep one is in its second block
        tight = await b.submit_anytime(image, deadline=time.perf_counter() + 0.1, reserve_s=0)
        deep = await deep
        await b.close()
        return tight, deep

    tight, deep = run(scenario())
    assert tight.fits and tight.decided < deep.decided and deep.exit_depth == 4
    assert tight.decided - tight.enqueued < 0.1  # one block of the other, then its own


def test_riders_leave_only_at_the_bundles_exit_depths() -> None:
    async def scenario():
        b = segment_batcher(0.01, exit_depths=[2, 4])
        b.start()
        image = np.zeros((1, 2, 2, 3), np.uint8)
        out = [await b.submit_anytime(image, deadline=time.perf_counter() + dl, reserve_s=0)
               for dl in (0.001, 0.035, 5.0)]  # fmt: skip
        await b.close()
        return out

    hopeless, middling, roomy = run(scenario())
    assert hopeless.exit_depth == 2 and not hopeless.fits  # the first exit, late
    assert middling.exit_depth == 2 and middling.fits
    assert roomy.exit_depth == 4


def test_a_depth_passed_over_after_a_slow_spell_is_retimed_when_idle() -> None:
    async def scenario():
        calls: list[tuple[object, int]] = []

        def engine(key, images):
            calls.append((key, len(images)))
            return sleeping_engine(key, images)

        m = model()
        m.replace(4, 1, [50.0] * 3)  # a slow spell taught depth 4 at batch 1: 50 ms
        examples = {d: np.zeros((1, 2, 2, 3), np.uint8) for d in (1, 2, 3, 4)}
        s = Scheduler(engine, m, [1, 2, 3, 4], ALL, max_batch=8, max_wait_ms=1.0,
                      queue_bound=64, examples=examples, retime_after_s=0.05,
                      retime_runs=2)  # fmt: skip
        s.start()
        images = np.zeros((1, 2, 2, 3), np.uint8)

        # Not fed back to calibration (Scheduler.answered): on a loaded CPU the pads it would
        # learn from these requests' wall time could push every depth past 20 ms.
        async def ask(budget_ms):
            served = await s.run(images, admission=s.admit(time.perf_counter()), route="r",
                                 budget_ms=budget_ms)  # fmt: skip
            return served.exit_depth

        before = await ask(20.0)
        await asyncio.sleep(1.0)  # idle: depth 4 is re-timed, one run per idle moment
        probes = [c for c in calls if c != (before, 1)]
        after = await ask(20.0)
        idle_calls = len(calls)
        await asyncio.sleep(0.6)  # nothing was passed over this time: an idle server rests
        quiet = len(calls) == idle_calls
        hopeless = await ask(0.1)  # below every depth: the budget is short, not the table wrong
        await asyncio.sleep(0.6)
        after_hopeless = calls[idle_calls:]
        await s.close()
        return before, probes, m.predict(4, 1), after, quiet, hopeless, after_hopeless

    before, probes, predicted, after, quiet, hopeless, after_hopeless = run(scenario())
    assert before == 3  # depth 4 was predicted at 50 ms: passed over
    assert probes == [(4, 1)] * 4  # at the size it was passed over at; 2 runs, each warmed
    assert predicted < 20.0 and after == 4  # the fresh runs replaced the slow ones
    assert quiet
    assert hopeless == 1 and after_hopeless == [(1, 1)]  # served; nothing deeper re-timed


def test_a_block_riders_left_before_is_retimed_when_idle() -> None:
    async def scenario():
        b = segment_batcher(0.01, exit_depths=[2, 4])
        for s in ("s3", "s4"):
            b.latency.replace(s, 1, [200.0] * 3)  # a slow spell
        examples = {s: np.zeros((1, 2), np.float32) for s in SEGMENTS}
        b.retimer = Retimer(b.latency, examples, after_s=0.05, runs=1)
        b.start()
        image = np.zeros((1, 2, 2, 3), np.uint8)

        async def ride():
            deadline = time.perf_counter() + 0.2
            return await b.submit_anytime(image, deadline=deadline, reserve_s=0)

        first = await ride()
        await asyncio.sleep(1.0)
        second = await ride()
        for s in ("s3", "s4"):
            b.latency.replace(s, 1, [200.0] * 3)  # slow again, but only a late rider sees it
        late = await b.submit_anytime(image, deadline=time.perf_counter(), reserve_s=0)
        await asyncio.sleep(0.5)
        await b.close()
        return first, second, late, b.latency.predict("s3", 1)

    first, second, late, s3_ms = run(scenario())
    assert first.exit_depth == 2 and first.fits  # blocks 3-4 predicted at 400 ms
    assert second.exit_depth == 4 and second.fits  # re-timed: 10 ms each
    assert late.exit_depth == 2 and not late.fits
    assert s3_ms == 200.0  # a late rider's leaving passed nothing over: not re-timed


def test_a_bucket_that_ran_since_it_was_passed_over_is_fresh() -> None:
    m = model()
    r = Retimer(m, {4: np.zeros((1, 2, 2, 3), np.uint8)}, after_s=0.0, runs=1)
    r.pass_over(4, 1)
    assert r.probe()[:2] == (4, 1)
    m.observe(4, 1, 4.0)  # it ran: nothing to re-time
    assert r.probe() is None
    r.pass_over(4, 1)
    m.observe(4, 1, 4.0)
    r.pass_over(4, 1)  # passed over again after that run: due again
    key, b, x = r.probe()
    assert (key, b, x.shape) == (4, 1, (1, 2, 2, 3))
    r.pass_over(3, 1)  # no input to time it on: never re-timed
    r.record(4, 1, 3.0)  # runs=1: the fresh run replaces the window
    assert m.predict(4, 1) == 3.0 and r.probe() is None
    r.pass_over(4, 8)
    assert r.probe()[2].shape == (8, 2, 2, 3)  # at the batch size it was passed over at
