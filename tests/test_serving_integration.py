"""The prediction server over a real socket, against real Redis and a real MLflow registry.

Faults are injected with a TCP proxy between the server and Redis (down: connections refused
and cut; hung: bytes held), never with a fake client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import uvicorn
from conftest import ServedWorld

from feastflow.online import RedisReader
from feastflow.privacy import hash_user_id
from feastflow.scoring import FeaturePlan, Ranker, ScoreRequest
from feastflow.store import open_store
from pipelines.demo import free_port
from pipelines.precompute import precompute
from registry import lifecycle
from serving.app import create_app
from serving.settings import ServingSettings

pytestmark = pytest.mark.redis
KEY = "test-admin-key"



class FaultProxy:
    """A TCP proxy to Redis that can go down (refuse and cut connections) or hang (hold bytes)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.hung = threading.Event()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        """Accept and forward connections."""
        self.hung.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every open connection (Redis stopped)."""
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the blocked accept(); close alone does not
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.hung.is_set():
                    time.sleep(0.01)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def running(settings: ServingSettings, start_timeout_s: float = 60, timeout_s: float = 10,
            headers: dict[str, str] | None = None) -> Iterator[httpx.Client]:
    """The app in uvicorn on a real port (a thread of this process); an httpx client to it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout_s,
                          headers=headers) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


def serving_settings(world: ServedWorld, **overrides: Any) -> ServingSettings:
    """Serving settings over the served world (no registry polling, text logs)."""
    base = world.settings.model_dump(exclude={"redis_url"})
    values = {**base, "redis_url": world.settings.redis_url, "registry_poll_seconds": 0,
              "log_json": False, "api_key": KEY, "request_log_sample": 0.0, **overrides}
    return ServingSettings(**values)


def body(world: ServedWorld, user: str, location: str = "home", hours: float = 0.0) -> dict:
    """A predict request for a raw user id just after the world's end."""
    at = world.at + pd.Timedelta(hours=hours)
    return {"user_id": user, "timestamp": at.isoformat(),
            "context": {"location": location, "battery": 55, "charging": False,
                        "network": "wifi", "secs_since_prev_unlock": 120.0}, "k": 4}


def new_version(world: ServedWorld, alias: str) -> str:
    """Register the champion's model again as a new version and point `alias` at it."""
    client = lifecycle.Registry(world.settings.tracking_uri).client
    name = world.spec.registered_model_name
    champion = client.get_model_version_by_alias(name, lifecycle.CHAMPION)
    created = client.create_model_version(name, champion.source, champion.run_id)
    for _ in range(50):
        if client.get_model_version(name, created.version).status == "READY":
            break
        time.sleep(0.1)
    client.set_registered_model_alias(name, alias, created.version)
    return str(created.version)


def champion_version(world: ServedWorld) -> str:
    """The version the champion alias points at now."""
    registry = lifecycle.Registry(world.settings.tracking_uri)
    version = registry.alias_version(world.spec.registered_model_name, lifecycle.CHAMPION)
    assert version is not None
    return version


@pytest.fixture()
def reset_aliases(served_world: ServedWorld) -> Iterator[None]:
    """Tests that move aliases put them back."""
    name = served_world.spec.registered_model_name
    before = champion_version(served_world)
    yield
    client = lifecycle.Registry(served_world.settings.tracking_uri).client
    client.set_registered_model_alias(name, lifecycle.CHAMPION, before)
    with contextlib.suppress(Exception):
        client.delete_registered_model_alias(name, lifecycle.CHALLENGER)


def test_answers_are_the_rankers_and_name_the_model(served_world: ServedWorld) -> None:
    settings = serving_settings(served_world)
    users = served_world.users(5)
    store = open_store(settings, served_world.spec.name)
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    model = registry.load_by_alias(served_world.spec.registered_model_name)
    ranker = Ranker(served_world.spec, FeaturePlan.from_store(store, served_world.spec),
                    model.booster)

    async def direct() -> list[list[str]]:
        reader = RedisReader(settings.redis_url, store.project)
        requests = [ScoreRequest(hash_user_id(u, settings.user_hash_secret),
                                 int(served_world.at.timestamp() * 1e6), body(served_world, u)["context"])
                    for u in users]
        try:
            return [s.items for s in await ranker.score(requests, reader, 4)]
        finally:
            await reader.close()

    expected = asyncio.run(direct())
    with running(settings) as client:
        # warm before it listens: the champion has scored once, the first answer is not cold
        assert client.get("/readyz").json()["reasons"] == []
        for user, apps in zip(users, expected, strict=True):
            answer = client.post("/v1/predict", json=body(served_world, user)).json()
            assert answer["fallback"] is None and answer["known_user"] is True
            assert answer["model_version"] == model.version and answer["variant"] == "champion"
            assert [a["app"] for a in answer["apps"]] == apps
            again = client.post("/v1/predict", json=body(served_world, user)).json()
            assert again["cached"] is True and again["apps"] == answer["apps"]
        metrics = client.get("/metrics").text
    assert 'feastflow_cache_requests_total{level="l1",result="hit",use_case="next_app"} 5.0' in metrics
    assert (f'feastflow_model_version_info{{use_case="next_app",variant="champion",'
            f'version="{model.version}"}} 1.0') in metrics


def test_the_ab_split_is_sticky_and_shadow_scoring_is_logged_not_served(
        served_world: ServedWorld, reset_aliases: None, tmp_path: Path) -> None:
    champion = champion_version(served_world)
    challenger = new_version(served_world, lifecycle.CHALLENGER)
    users = served_world.users(30)
    settings = serving_settings(served_world, challenger_share=0.5,
                                prediction_cache_ttl_seconds=0)
    seen: dict[str, set[tuple[str, str]]] = {u: set() for u in users}
    for _ in range(2):  # two server lifetimes: the split must survive a restart
        with running(settings) as client:
            for user in users:
                for _ in range(2):
                    answer = client.post("/v1/predict", json=body(served_world, user)).json()
                    seen[user].add((answer["variant"], answer["model_version"]))
    assert all(len(variants) == 1 for variants in seen.values()), seen
    variants = [next(iter(v)) for v in seen.values()]
    assert set(variants) == {("champion", champion), ("challenger", challenger)}
    assert 5 <= sum(v[0] == "challenger" for v in variants) <= 25

    shadow = serving_settings(served_world,
                              challenger_share=0.0, shadow_share=1.0, request_log_sample=1.0,
                              prediction_cache_ttl_seconds=0)
    log_dir = shadow.served_log_dir
    before = set(log_dir.rglob("*.parquet")) if log_dir.exists() else set()
    with running(shadow) as client:
        for user in users[:6]:
            answer = client.post("/v1/predict", json=body(served_world, user)).json()
            assert answer["variant"] == "champion" and answer["model_version"] == champion
        time.sleep(0.3)  # shadow work runs after the answers
    files = sorted(set(log_dir.rglob("*.parquet")) - before)
    logged = pd.concat([pd.read_parquet(f) for f in files])
    served, shadowed = logged[~logged["shadow"]], logged[logged["shadow"]]
    assert len(served) == 6 and set(served["variant"]) == {"champion"}
    assert set(shadowed["variant"]) == {"challenger"}
    assert set(shadowed["request_id"]) == set(served["request_id"])
    features = json.loads(served["features"].iloc[0])
    assert "candidates" in features and "app_share_28d" in features
    assert len(features["app_share_28d"]) == len(features["candidates"])


def test_a_hot_reload_swaps_the_model_with_no_failed_request(
        served_world: ServedWorld, reset_aliases: None) -> None:
    old = champion_version(served_world)
    users = served_world.users(10)
    settings = serving_settings(served_world)
    results: list[tuple[int, str | None, str | None]] = []
    stop = threading.Event()

    def hammer(base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            i = 0
            while not stop.is_set():
                response = client.post("/v1/predict", json=body(served_world, users[1 + i % 9],
                                                               hours=(i % 3) * 0.5))
                answer = response.json()
                results.append((response.status_code, answer.get("model_version"),
                                answer.get("fallback")))
                i += 1

    with running(settings) as client:
        client.post("/v1/predict", json=body(served_world, users[0]))
        assert client.post("/v1/predict", json=body(served_world, users[0])).json()["cached"]
        worker = threading.Thread(target=hammer, args=(str(client.base_url),))
        worker.start()
        time.sleep(1.0)
        new = new_version(served_world, lifecycle.CHAMPION)
        reloaded = client.post("/admin/reload", headers={"x-api-key": KEY}).json()
        time.sleep(1.0)
        stop.set()
        worker.join()
        after = client.post("/v1/predict", json=body(served_world, users[0])).json()
    assert reloaded["models"]["champion"] == new and f"champion:v{new}" in reloaded["swapped"]
    assert {status for status, _, _ in results} == {200}
    assert {fallback for _, _, fallback in results} == {None}
    versions = [version for _, version, _ in results]
    assert versions[0] == old and versions[-1] == new
    assert after["model_version"] == new and after["cached"] is False  # L1 emptied by the swap


def test_redis_down_or_hung_is_answered_from_fallbacks_then_recovers(
        served_world: ServedWorld) -> None:
    redis_port = int(served_world.settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = FaultProxy(redis_port)
    db = served_world.settings.redis_url.rsplit("/", 1)[1]
    settings = serving_settings(
        served_world, redis_url=f"redis://127.0.0.1:{proxy.port}/{db}",
        prediction_cache_ttl_seconds=0.3, breaker_failures=2, breaker_reset_seconds=0.3,
        latency_budget_ms=100)
    cached_user, bundled_user, stranger = *served_world.users(2), "someone-new"
    precompute(settings, served_world.spec, top=2, start=served_world.at.to_pydatetime(), k=4)
    try:
        with running(settings) as client:
            client.post("/admin/reload", headers={"x-api-key": KEY})  # loads the bundles
            warm = client.post("/v1/predict", json=body(served_world, cached_user)).json()
            assert warm["fallback"] is None
            time.sleep(0.4)  # the L1 entry expires: only a fallback may still use it
            proxy.down()
            answers = {user: client.post("/v1/predict", json=body(served_world, user))
                       for user in (cached_user, bundled_user, stranger)}
            assert {r.status_code for r in answers.values()} == {200}
            levels = {user: r.json()["fallback"] for user, r in answers.items()}
            assert levels == {cached_user: "cache", bundled_user: "user_hour",
                              stranger: "popular_at_hour"}
            assert answers[cached_user].json()["apps"] == warm["apps"]
            ready = client.get("/readyz").json()
            assert ready["status"] == "degraded" and "online_store_unreachable" in ready["reasons"]

            proxy.up()
            recovered_after = None
            started = time.monotonic()
            while time.monotonic() - started < 5:
                answer = client.post("/v1/predict", json=body(served_world, stranger, hours=1))
                if client.post("/v1/predict", json=body(served_world, bundled_user)).json()[
                        "fallback"] is None:
                    recovered_after = time.monotonic() - started
                    break
                assert answer.status_code == 200
                time.sleep(0.05)
            assert recovered_after is not None, "no full answer 5 s after Redis came back"

            proxy.hung.set()  # Redis accepts but never answers: the latency budget answers
            started = time.monotonic()
            slow = client.post("/v1/predict", json=body(served_world, bundled_user, hours=2))
            assert slow.status_code == 200 and slow.json()["fallback"] == "user_hour"
            assert time.monotonic() - started < 2.0
            proxy.hung.clear()
            metrics = client.get("/metrics").text
        assert 'feastflow_fallbacks_total{level="user_hour",use_case="next_app"}' in metrics
    finally:
        proxy.down()


def test_registry_down_at_start_serves_the_last_good_model_from_disk(
        served_world: ServedWorld, tmp_path: Path) -> None:
    settings = serving_settings(served_world)
    with running(settings) as client:
        version = client.get("/healthz").json()["model_version"]
    saved = settings.models_dir / served_world.spec.registered_model_name / "champion"
    assert json.loads((saved / "meta.json").read_text())["version"] == version
    assert (saved / "model.lgb").read_text().startswith("tree")  # LightGBM's text format

    unreachable = serving_settings(served_world,
                                   mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    with running(unreachable) as client:
        ready = client.get("/readyz").json()
        answer = client.post("/v1/predict", json=body(served_world, served_world.users(1)[0]))
    assert ready["status"] == "degraded" and ready["models"]["champion"] == version
    assert {"model_from_disk", "registry_unreachable"} <= set(ready["reasons"])
    assert answer.status_code == 200
    assert answer.json()["model_version"] == version and answer.json()["fallback"] is None


def test_the_bundle_endpoint_answers_24_hours(served_world: ServedWorld) -> None:
    settings = serving_settings(served_world)
    busy, other = served_world.users(2)
    written = precompute(settings, served_world.spec, top=1,
                         start=served_world.at.to_pydatetime(), k=3)
    bundles = json.loads(written.path.read_text())
    start = served_world.at.isoformat()
    with running(settings) as client:
        client.headers["x-api-key"] = KEY  # a user's history: keyed
        precomputed = client.get(f"/v1/users/{busy}/bundle", params={"start": start, "k": 3}).json()
        computed = client.get(f"/v1/users/{other}/bundle", params={"start": start, "k": 3}).json()
        stranger = client.get("/v1/users/nobody-at-all/bundle", params={"start": start}).json()
    busy_hash = hash_user_id(busy, settings.user_hash_secret)
    assert precomputed["precomputed"] is True
    assert [h["apps"] for h in precomputed["hours"]] == bundles["users"][busy_hash]
    assert computed["precomputed"] is False and computed["fallback"] is None
    assert len(computed["hours"]) == 24 and all(len(h["apps"]) == 3 for h in computed["hours"])
    assert computed["hours"][0]["starts_at"].startswith(served_world.at.strftime("%Y-%m-%dT%H"))
    assert stranger["known_user"] is False and stranger["fallback"] == "popular_at_hour"
    assert all(h["apps"] for h in stranger["hours"])
