"""A DBA's lower statement_timeout default under a proxy limit (proxy/dbadefault.py): the lower of the two starts a
limited pool's servers, learnt by one probe per backend, database and role, learnt again at each reload."""

from __future__ import annotations

from pathlib import Path

from proxy.dbadefault import LearntDefaults, Probe, Start, lower, started_parameters, target
from proxy.limits import server_request as limited
from proxy.pooling import Connect, ServerRequest, server_request
from tests.unit.test_pooling import config


def request(tmp_path: Path, limit: float | None = 300.0, tenant: str = "a") -> ServerRequest:
    plain = server_request(config(tmp_path), tenant)
    return plain if limit is None else limited(plain, limit)


def test_lower_counts_zero_as_no_limit_on_either_side() -> None:
    assert lower(1000, 300000) == 1000  # the DBA's is lower: it binds
    assert lower(600000, 1000) == 1000  # the limit is lower
    assert lower(0, 300000) == 300000  # no default of the DBA's
    assert lower(1000, 0) == 1000
    assert lower(None, 300000) == 300000  # unknown (a failed probe): the limit, as before


def test_started_parameters_replace_the_limit_only_when_the_default_is_lower() -> None:
    asked = {"client_encoding": "UTF8", "statement_timeout": "300000ms"}
    assert started_parameters(asked, 1000) == {"client_encoding": "UTF8", "statement_timeout": "1000ms"}
    assert started_parameters(asked, 600000) is asked
    assert started_parameters(asked, 0) is asked
    assert started_parameters(asked, None) is asked


def test_only_limited_pools_need_a_default(tmp_path: Path) -> None:
    assert target(request(tmp_path, None)) is None
    assert target(request(tmp_path)) == ("main", "saas", request(tmp_path).key.role)


def test_one_probe_per_target_and_the_waiting_servers_start_with_the_lower_value(tmp_path: Path) -> None:
    d = LearntDefaults()
    req = request(tmp_path)
    first, second = Connect(1, req), Connect(2, request(tmp_path, tenant="b"))  # (the same database and role)
    [probe] = d.connect(first, 0.0)
    assert isinstance(probe, Probe) and probe.request is req
    assert d.connect(second, 0.0) == []  # waits for the same probe
    started = d.learnt(probe.target, probe.generation, 1000, 0.0)
    assert [(s.connect.server, s.parameters["statement_timeout"]) for s in started] == [(1, "1000ms"), (2, "1000ms")]
    [again] = d.connect(Connect(3, req), 1.0)  # learnt: no probe
    assert isinstance(again, Start) and again.parameters["statement_timeout"] == "1000ms"


def test_an_unlimited_pool_starts_at_once_without_a_probe(tmp_path: Path) -> None:
    req = request(tmp_path, None)
    [start] = LearntDefaults().connect(Connect(1, req), 0.0)
    assert isinstance(start, Start) and start.parameters is req.parameters


def test_a_failed_probe_starts_with_the_limit_and_is_asked_again_later(tmp_path: Path) -> None:
    d = LearntDefaults()
    req = request(tmp_path)
    [probe] = d.connect(Connect(1, req), 0.0)
    [start] = d.learnt(probe.target, probe.generation, None, 0.0)
    assert start.parameters["statement_timeout"] == "300000ms"  # today's behaviour
    [start] = d.connect(Connect(2, req), 10.0)
    assert isinstance(start, Start) and start.parameters["statement_timeout"] == "300000ms"
    [retry] = d.connect(Connect(3, req), 100.0)
    assert isinstance(retry, Probe)


def test_a_reload_learns_again_drops_older_answers_and_marks_servers_started_otherwise(tmp_path: Path) -> None:
    d = LearntDefaults()
    req = request(tmp_path)
    [probe] = d.connect(Connect(1, req), 0.0)
    [start] = d.learnt(probe.target, probe.generation, 1000, 0.0)
    [reprobe] = d.reload()
    assert reprobe.generation > probe.generation
    assert d.connect(Connect(2, req), 1.0) == []  # waits for the reload's answer
    assert d.learnt(probe.target, probe.generation, 1000, 1.0) == []  # an answer from before the reload
    assert not d.outdated(probe.target, req.parameters, start.parameters)  # unknown yet: kept
    [start2] = d.learnt(reprobe.target, reprobe.generation, 2000, 1.0)
    assert start2.parameters["statement_timeout"] == "2000ms"
    assert d.outdated(probe.target, req.parameters, start.parameters)  # started with 1s: not handed out again
    assert not d.outdated(probe.target, req.parameters, start2.parameters)
