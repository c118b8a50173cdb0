"""A schedule search on the exchange, run by test_exchange_schedule_search.py in a pytest of
its own (its own stack, with or without a weakness): not collected by a plain
``pytest tests`` (the file name does not start with ``test_``).

Faults on the exchange's two stores, PostgreSQL and Redis, under an order and market
load; each example is judged as the experiments are (no acknowledged order lost, then
the whole history: set-full, unique ids, conservation). The healthy exchange holds up
under every schedule; the weakness cache-idempotency (idempotency keys only in Redis)
breaks only when PostgreSQL stalls and Redis loses or misses the keys of the orders it
held: a combination of two faults, in that order.
"""

from __future__ import annotations

import os

import pytest

from pytest_chaos import schedules

pytestmark = [pytest.mark.schedule, pytest.mark.root, pytest.mark.slow]

#: Bounds that fit CI: two services, three kinds, at most three steps in 4 s.
STRATEGY = schedules(
    ["postgres", "redis"],
    kinds=["pause", "kill", "partition"],
    max_steps=3,
    length="4s",
    resolution="0.5s",
)


def test_schedule_search(chaos, exchange):
    def example(schedule):
        exchange.new_trial()
        with exchange.load(orders=20, market=5) as load:
            load.wait_for_records("orders", 5)  # the load flows before the first step
            chaos.run_schedule(schedule)
        exchange.check_no_orders_lost(load, chaos)

    chaos.explore(
        STRATEGY,
        example,
        steady=exchange.accepts_orders,
        max_examples=int(os.environ.get("SCHEDULE_MAX_EXAMPLES", "20")),
        reproduce=int(os.environ.get("SCHEDULE_REPRODUCE", "3")),
        shrink_budget=os.environ.get("SCHEDULE_SHRINK_BUDGET", "5m"),
        seed=int(os.environ["SCHEDULE_SEED"]) if os.environ.get("SCHEDULE_SEED") else None,
        # Each run searches afresh: its figures measure a search, not a replay of the
        # last one's failure from Hypothesis' example database.
        database=None,
    )
