"""The pacing gate's hook for a rate set from outside (a fleet's share of its rate)."""

from __future__ import annotations

import pytest

from pacer.control.pacing import Pacer


def test_an_imposed_rate_paces_the_starts_and_can_be_lifted() -> None:
    p = Pacer()
    assert p.status(0.0).rate is None
    p.impose_rate(0.0, 4.0)
    assert p.status(0.0).rate == 4.0 and p.learned_rate is None
    p.commit(0.0)
    assert p.next_start(0.0) == pytest.approx(0.25)  # evenly spaced at 4/s
    p.impose_rate(0.1, 2.0)
    assert p.status(0.1).rate == 2.0
    p.impose_rate(0.2, None)
    assert p.status(0.2).rate is None and p.next_start(0.2) == 0.2


def test_the_tighter_of_an_imposed_and_a_learned_rate_binds() -> None:
    p = Pacer()
    p.resume_rate(0.0, 3.0)
    p.impose_rate(0.0, 5.0)
    assert p.status(0.0).rate == 3.0
    p.impose_rate(0.0, 1.5)
    assert p.status(0.0).rate == 1.5
