"""fleet: the gauges of an upstream shared through Redis in ``/metrics``."""

from __future__ import annotations

from pacer.service.metrics import Metrics
from test_metrics import samples, snapshot, state, value

FLEET = {"fleet_key": "api", "node": "host-a", "limit": 12.0, "epoch": 3, "share": 2,
         "degraded": False, "fleet_inflight": 11, "live_nodes": 6, "rate": 24.5,
         "pace": 4.083, "quota_share": 0.1667, "nodes": []}


def test_the_fleets_gauges_follow_the_snapshot() -> None:
    data = state(fleet=FLEET)
    metrics = Metrics(lambda: snapshot(data), process_metrics=False)
    text = metrics.render().decode()
    labels = {"upstream": "a", "fleet_key": "api"}
    assert value(text, "pacer_fleet_limit", **labels) == 12
    assert value(text, "pacer_fleet_leased_slots", **labels) == 11
    assert value(text, "pacer_fleet_share", **labels) == 2
    assert value(text, "pacer_fleet_nodes", **labels) == 6
    assert value(text, "pacer_fleet_degraded", **labels) == 0
    assert value(text, "pacer_fleet_rate", **labels) == 24.5
    assert value(text, "pacer_fleet_pace", **labels) == 4.083
    assert value(text, "pacer_fleet_quota_share", **labels) == 0.1667
    # Redis lost: degraded, on a safe share; what is not known has no sample.
    data = state(fleet={**FLEET, "degraded": True, "share": 1, "rate": None, "pace": None})
    text = metrics.render().decode()
    assert value(text, "pacer_fleet_degraded", **labels) == 1
    assert value(text, "pacer_fleet_share", **labels) == 1
    assert not any(name == "pacer_fleet_rate" for name, _ in samples(text))


def test_no_fleet_gauges_without_a_fleet() -> None:
    metrics = Metrics(lambda: snapshot(state()), process_metrics=False)
    assert "pacer_fleet" not in metrics.render().decode()
