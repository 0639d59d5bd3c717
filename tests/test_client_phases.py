"""benchmarks/client_phases.py: its arithmetic by hand, and one tiny run whose every client call it times."""

from __future__ import annotations

import pytest

from benchmarks.client_phases import breakdown, measure, per_round
from benchmarks.pfl_peer import Workload


def test_phases_per_client_from_the_marks_by_hand():
    # marks after the start and two rounds; round 1: 2 clients in 1.0 s, of which 0.6 s of messages,
    # training 0.4 s, receive 0.05 s, aggregation 0.1 s; round 2: 4 clients in 3.0 s, messages 2.0 s,
    # training 1.6 s, receive 0.1 s, reply 0.2 s, aggregation 0.2 s
    marks = [
        (10.0, {}, {}),
        (11.0, {"messages": 0.6, "training": 0.4, "receive": 0.05, "aggregate": 0.1},
         {"messages": 1, "training": 2, "receive": 2, "aggregate": 1}),
        (14.0, {"messages": 2.6, "training": 2.0, "receive": 0.15, "reply": 0.2, "aggregate": 0.3},
         {"messages": 2, "training": 6, "receive": 6, "reply": 12, "aggregate": 2}),
    ]
    rounds = per_round(marks)
    assert [r["clients"] for r in rounds] == [2, 4]
    assert rounds[1]["phases_s"]["training"] == pytest.approx(1.6)
    assert rounds[1]["calls"] == {"messages": 1, "training": 4, "receive": 4, "reply": 12, "aggregate": 1}
    result = breakdown(rounds[1:])
    ms = result["per_client_ms"]
    assert ms["training"] == 400.0 and ms["receive"] == 25.0 and ms["reply"] == 50.0 and ms["state"] == 0.0
    assert ms["message_other"] == 25.0  # (2.0 - 1.6 - 0.1 - 0.2) / 4
    assert ms["server"] == 250.0 and ms["server_aggregate"] == 50.0  # (3.0 - 2.0) / 4, 0.2 / 4
    assert result["outside_training_ms"] == 350.0  # (3.0 - 1.6) / 4
    assert result["round_s"] == 3.0 and result["clients_per_round"] == [4]


@pytest.mark.e2e
def test_every_client_call_of_the_timed_rounds_is_timed(shared_data, tmp_path):
    result = measure(Workload(100, 2), shared_data, rounds=4, out=tmp_path / "run")
    assert result["rounds_timed"] == [2, 3] and result["clients_per_round"] == [2]
    calls = result["calls"]
    assert all(calls[phase] == 4 for phase in ("receive", "data", "state", "training"))
    assert calls["reply"] == 12  # what goes back picked, made arrays, made a message: three calls a client
    assert calls["aggregate"] == 2  # one aggregation a round
    ms = result["per_client_ms"]
    assert ms["training"] > 0 and result["outside_training_ms"] > 0
    assert (tmp_path / "run" / "summary.json").is_file()  # the run wrote its run directory, as fl-ee run does
