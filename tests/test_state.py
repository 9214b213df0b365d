"""The typed state snapshot: what state.json holds, read back the same, tolerantly."""

from __future__ import annotations

import json

from pacer.service.state import JobsState, LastMinute, ServiceState, UpstreamState


def test_round_trip_through_json() -> None:
    state = ServiceState(
        pid=42, version="1.2.3", started_at=1.5, updated_at=2.5, stopping=True, drain=False,
        jobs=JobsState(active=2, pending_incoming=3, queued_requests=4,
                       remaining_requests=5, done=6, failed=7, rejected=8),
        upstreams={"a": UpstreamState(limit=9, inflight=3, waiting=1, breaker="open",
                                      done=10, failed=1, attempts=12, retries=2,
                                      rate_limited=1, queued=4, pauses=1, rate_rps=12.5,
                                      paused_for_s=None, jobs_waiting=2,
                                      last_minute=LastMinute(1.5, 0.25, 12))},
        spool_errors={"disk": 1}, notify_errors=3)
    text = json.dumps(state.to_json())
    assert ServiceState.from_json(json.loads(text)) == state


def test_missing_and_odd_fields_get_their_defaults() -> None:
    state = ServiceState.from_json({
        "pid": "x", "version": 3, "jobs": {"active": 2, "done": "many"},
        "upstreams": {"a": {"limit": 4.0, "breaker": None, "last_minute": []}, "b": 7},
        "spool_errors": [1, 2], "stopping": 1,
    })
    assert state.pid == 0 and state.version == "" and state.stopping is True
    assert state.jobs == JobsState(active=2)
    assert state.upstreams["a"] == UpstreamState(limit=4)
    assert state.upstreams["b"] == UpstreamState()
    assert state.spool_errors == {}
    assert ServiceState.from_json(None) == ServiceState()
