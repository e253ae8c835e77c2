"""The online reader on the Redis deployments Feast's Redis store speaks to: a 3-node Redis
Cluster, a TLS server that wants a client certificate, ACL users, a Sentinel.

Each test starts its own redis-server processes on free ports (certificates made here with
openssl), lets Feast write the served world's features into them (`feast materialize`), and
checks that our readers return what Feast's `get_online_features` returns from the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
import redis
from feast import FeatureStore
from feast.infra.online_stores.redis import RedisOnlineStore
from test_online_reader import _comparable, _feast_rows

from feastflow.errors import OnlineStoreError
from feastflow.online import (
    OnlineReader,
    RedisClusterReader,
    RedisReader,
    ViewLayout,
    key_slot,
    open_reader,
    view_layouts,
)
from feastflow.redis_config import RedisConfig, parse_redis
from feastflow.settings import Settings
from feastflow.store import open_store
from pipelines.demo import free_port
from pipelines.feast_ops import materialize

if TYPE_CHECKING:
    from conftest import ServedWorld

pytestmark = pytest.mark.redis

USER, PASSWORD = "feastflow", "s3cret-pw"
ACL = f"user default off\nuser {USER} on >{PASSWORD} ~* &* +@all\n"


# --- configuration: what Feast's connection string says, we say ------------------------------

def test_urls_and_feast_connection_strings_give_the_same_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    url = parse_redis(f"rediss://app:p%40ss@10.0.0.1:7000,10.0.0.2:7001/0?ssl_ca_certs={ca}",
                      "redis_cluster")
    assert url.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (url.username, url.password, url.ssl, url.ssl_ca_certs) == ("app", "p@ss", True, str(ca))
    rendered = url.feast_connection_string()
    assert "db=" not in rendered  # redis-py's RedisCluster refuses a db argument
    # Feast parses our string into the kwargs redis-py gets: the same servers and options
    nodes, kwargs = RedisOnlineStore._parse_connection_string(rendered)
    assert nodes == [{"host": "10.0.0.1", "port": "7000"}, {"host": "10.0.0.2", "port": "7001"}]
    assert kwargs == {"username": "app", "password": "p@ss", "ssl": True, "ssl_ca_certs": str(ca)}
    # and Feast's own string (what a feature_store.yaml holds) reads back to the same config
    assert parse_redis(rendered, "redis_cluster") == url
    plain = parse_redis("redis://:pw@127.0.0.1:6400/3")
    assert (plain.nodes, plain.db, plain.username, plain.password, plain.ssl) == (
        (("127.0.0.1", 6400),), 3, None, "pw", False)
    assert parse_redis("localhost:6379,db=2,password=123,ssl=true,ssl_cert_reqs=none") == (
        RedisConfig(nodes=(("localhost", 6379),), db=2, password="123", ssl=True,
                    ssl_cert_reqs="none"))


@pytest.mark.parametrize(("text", "redis_type", "message"), [
    ("http://localhost:6379", "redis", "must start with redis:// or rediss://"),
    ("redis://localhost:63x9/0", "redis", "port of 'localhost:63x9' is not a number"),
    ("localhost:6379,sssl=true", "redis", "unknown option(s) sssl"),
    ("redis://localhost:6379/2", "redis_cluster", "a Redis Cluster has only database 0"),
    ("rediss://localhost:6379/0?ssl_ca_certs=/no/such/ca.pem", "redis", "ssl_ca_certs: no such file"),
    ("redis://localhost/0", "redis_shards", "redis_type must be one of"),
    ("localhost:6379,ssl=maybe", "redis", "ssl must be true or false"),
])
def test_bad_redis_configuration_names_the_option(text: str, redis_type: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_redis(text, redis_type)


def test_key_slot_is_redis_clusters() -> None:
    # Values from the cluster spec and `CLUSTER KEYSLOT` (hash tags included).
    assert key_slot(b"123456789") == 12739
    assert key_slot(b"foo") == 12182
    assert key_slot(b"{user1000}.following") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")  # an empty tag hashes the whole key
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")


# --- real servers ----------------------------------------------------------------------------

@dataclass
class Certificates:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, signed by the CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Made with openssl for this test run (2 days)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / f"{ca}.key",
                 "-out", d / f"{ca}.pem", "-days", "2", "-subj", f"/CN=feastflow test {ca}")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", d / f"{name}.key",
                 "-out", d / f"{name}.csr", "-subj", f"/CN=feastflow test {name}")
        _openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.pem", "-CAkey",
                 d / "ca.key", "-CAcreateserial", "-out", d / f"{name}.pem", "-days", "2",
                 "-extfile", d / "san.cnf")
    return Certificates(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
                        d / "client.key", d / "other_ca.pem")


def _wait(ready: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.1)


@contextlib.contextmanager
def redis_servers(workdir: Path, configs: list[str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """One redis-server per config text (each in its own folder, nothing saved), stopped after."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    processes = []
    try:
        for i, config in enumerate(configs):
            folder = workdir / f"node{i}"
            folder.mkdir(parents=True)
            path = folder / "redis.conf"
            path.write_text(f'bind 127.0.0.1\nsave ""\nappendonly no\ndir {folder}\n'
                            f'logfile {folder / "redis.log"}\n{config}')
            processes.append(subprocess.Popen([binary, str(path)], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """A 3-master Redis Cluster (no replicas) with an ACL user; yields its ports."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    ports = [free_port() for _ in range(3)]
    # The bus port is chosen too: port + 10000, the default, may be taken or past 65535.
    configs = [f"port {p}\ncluster-port {free_port()}\ncluster-enabled yes\n"
               f"cluster-config-file nodes.conf\ncluster-node-timeout 5000\n{ACL}" for p in ports]
    with redis_servers(tmp_path_factory.mktemp("cluster"), configs):
        clients = [redis.Redis(port=p, username=USER, password=PASSWORD) for p in ports]
        for client in clients:
            _wait(client.ping, "a cluster node did not start")
        subprocess.run(["redis-cli", "--user", USER, "--pass", PASSWORD, "--no-auth-warning",
                        "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        for client in clients:
            _wait(lambda c=client: c.cluster("info")["cluster_state"] == "ok",
                  "the cluster did not come up")
        yield ports


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
              ) -> Iterator[int]:
    """A redis-server on TLS only, wanting a client certificate, with an ACL user; its port."""
    port = free_port()
    c = certificates
    config = (f"port 0\ntls-port {port}\ntls-cert-file {c.server_cert}\ntls-key-file "
              f"{c.server_key}\ntls-ca-cert-file {c.ca}\ntls-auth-clients yes\n{ACL}")
    with redis_servers(tmp_path_factory.mktemp("tls"), [config]):
        client = redis.Redis(port=port, username=USER, password=PASSWORD, ssl=True,
                             ssl_ca_certs=str(c.ca), ssl_certfile=str(c.client_cert),
                             ssl_keyfile=str(c.client_key))
        _wait(client.ping, "the TLS redis-server did not start")
        yield port


def settings_on(served_world: ServedWorld, home: Path, redis_url: str, **redis: Any) -> Settings:
    """The served world's definitions and feature tables, a registry of its own, another Redis."""
    source = served_world.settings
    (home / "feast").mkdir(parents=True)
    shutil.copy(source.feast_dir / "registry.db", home / "feast" / "registry.db")
    (home / "features").symlink_to(source.features_dir)
    return Settings(home=home, feature_repo=source.feature_repo, profile="redis",
                    redis_url=redis_url, user_hash_secret=source.user_hash_secret, **redis)


def sample_keys(settings: Settings, use_case: str, layout: ViewLayout, n: int = 40
                ) -> list[tuple[Any, ...]]:
    """Up to n keys of the view's feature table (all materialized) and two it cannot hold."""
    table = settings.feature_tables_dir(use_case) / f"{layout.name.removesuffix('_fv')}.parquet"
    frame = pd.read_parquet(table, columns=list(layout.join_keys)).drop_duplicates().head(n)
    keys = [tuple(v.item() if hasattr(v, "item") else v for v in row)
            for row in frame.itertuples(index=False, name=None)]
    absent = [tuple("no-such-key" if isinstance(v, str) else -7 for v in keys[0]),
              tuple("日本-absent" if isinstance(v, str) else 10**9 for v in keys[0])]
    return keys + absent


def assert_reader_equals_feast(reader: OnlineReader, store: FeatureStore, settings: Settings,
                               use_case: str) -> int:
    """Every view's rows through `reader` equal `get_online_features`; the keys found."""
    layouts = view_layouts(store)
    reads = [(layouts[n], sample_keys(settings, use_case, layouts[n])) for n in sorted(layouts)]

    async def read() -> list[Any]:
        try:
            return await reader.read(reads)
        finally:
            await reader.close()

    rows = asyncio.run(read())
    found = 0
    for (layout, keys), view_rows in zip(reads, rows, strict=True):
        expected, _ = _feast_rows(store, layout, list(layout.features), keys)
        assert [_comparable(r) for r in view_rows] == expected, layout.name
        assert view_rows[-1] == view_rows[-2] == (None, None), layout.name
        found += sum(r != (None, None) for r in view_rows)
    return found


def test_cluster_reader_equals_feast_on_a_three_node_cluster(
        served_world: ServedWorld, cluster: list[int], tmp_path: Path) -> None:
    url = f"redis://{USER}:{PASSWORD}@" + ",".join(f"127.0.0.1:{p}" for p in cluster) + "/0"
    settings = settings_on(served_world, tmp_path / "home", url, redis_type="redis_cluster")
    use_case = served_world.spec.name
    materialize(settings, use_case)  # Feast writes through redis-py's RedisCluster
    store = open_store(settings, use_case)
    reader = open_reader(settings, store)
    assert isinstance(reader, RedisClusterReader)
    assert assert_reader_equals_feast(reader, store, settings, use_case) > 100
    # the rows really are spread: every node holds a share of Feast's hashes
    sizes = [redis.Redis(port=p, username=USER, password=PASSWORD).dbsize() for p in cluster]
    assert all(size > 50 for size in sizes), sizes


def _node_of(client: redis.Redis, slot: int, ports: list[int]) -> tuple[int, int]:
    """(port owning the slot, another port)."""
    for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
        if start <= slot <= end:
            owner = int(master[1])
            return owner, next(p for p in ports if p != owner)
    raise AssertionError(f"slot {slot} unserved")


def test_cluster_reader_follows_ask_and_moved_when_a_slot_migrates(
        served_world: ServedWorld, cluster: list[int], tmp_path: Path) -> None:
    # A key the reader has read moves to another node in two steps, as redis-cli --cluster
    # reshard does: mid-migration the old node answers ASK, afterwards MOVED.
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{cluster[0]}/0"  # one seed is enough
    settings = settings_on(served_world, tmp_path / "home", url, redis_type="redis_cluster")
    use_case = served_world.spec.name
    materialize(settings, use_case)
    store = open_store(settings, use_case)
    layout = next(lo for lo in view_layouts(store).values() if lo.join_keys == ("user_id",))
    keys = sample_keys(settings, use_case, layout, n=5)[:5]
    reader = RedisClusterReader(settings.redis(), store.project)
    moving = reader.keys.encode(layout, keys[0])
    slot = key_slot(moving)
    auth = {"username": USER, "password": PASSWORD}
    source_port, target_port = _node_of(redis.Redis(port=cluster[0], **auth), slot, cluster)
    source, target = redis.Redis(port=source_port, **auth), redis.Redis(port=target_port, **auth)
    source_id, target_id = source.execute_command("CLUSTER MYID"), target.execute_command("CLUSTER MYID")

    async def scenario() -> list[list[Any]]:
        before = await reader.read([(layout, keys)])
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        for key in source.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000):
            source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "AUTH2",
                                   USER, PASSWORD, "KEYS", key)
        asking = await reader.read([(layout, keys)])  # stale map: the old node says ASK
        for client in (target, source):  # the importing node first, as the spec says
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        moved = await reader.read([(layout, keys)])  # stale map: the old node says MOVED
        await reader.close()
        return [before, asking, moved]

    before, asking, moved = asyncio.run(scenario())
    expected, _ = _feast_rows(store, layout, list(layout.features), keys)
    assert [_comparable(r) for r in before[0]] == expected
    assert before[0][0] != (None, None)
    assert asking == before and moved == before
    count = "CLUSTER COUNTKEYSINSLOT"
    assert target.execute_command(count, slot) >= 1 and source.execute_command(count, slot) == 0


def test_tls_reader_with_client_certificate_and_acl_user_equals_feast(
        served_world: ServedWorld, tls_redis: int, certificates: Certificates, tmp_path: Path
        ) -> None:
    c = certificates
    settings = settings_on(served_world, tmp_path / "home",
                           f"rediss://{USER}:{PASSWORD}@127.0.0.1:{tls_redis}/2",
                           redis_ssl_ca_certs=c.ca, redis_ssl_certfile=c.client_cert,
                           redis_ssl_keyfile=c.client_key)
    use_case = served_world.spec.name
    materialize(settings, use_case)  # Feast connects with ssl=true and the same files
    store = open_store(settings, use_case)
    reader = open_reader(settings, store)
    assert isinstance(reader, RedisReader) and not isinstance(reader, RedisClusterReader)
    assert assert_reader_equals_feast(reader, store, settings, use_case) > 100
    assert redis.Redis(port=tls_redis, username=USER, password=PASSWORD, ssl=True, db=2,
                       ssl_ca_certs=str(c.ca), ssl_certfile=str(c.client_cert),
                       ssl_keyfile=str(c.client_key)).dbsize() > 100


def test_tls_and_acl_failures_are_clear_online_store_errors(
        tls_redis: int, certificates: Certificates) -> None:
    c = certificates
    base = f"127.0.0.1:{tls_redis}"
    files = (c.ca, c.client_cert, c.client_key)
    cases = {
        "refused the connection's setup (AUTH as feastflow": parse_redis(
            f"rediss://{USER}:wrong@{base}/0").with_files(*files),
        "(TLS): [SSL: CERTIFICATE_VERIFY_FAILED]": parse_redis(
            f"rediss://{USER}:{PASSWORD}@{base}/0").with_files(c.other_ca, c.client_cert,
                                                               c.client_key),
        f"cannot connect to Redis at {base}": parse_redis(f"redis://{USER}:{PASSWORD}@{base}/0"),
    }

    async def attempt(config: RedisConfig) -> tuple[str, bool]:
        reader = RedisReader(config, "next_app", connect_timeout_s=2)
        try:
            with pytest.raises(OnlineStoreError) as raised:
                await reader._connection()
            return str(raised.value), await reader.ping()
        finally:
            await reader.close()

    for message, config in cases.items():
        error, pings = asyncio.run(attempt(config))
        if "cannot connect" in message:  # plain text to a TLS port: no reply, or a reset
            assert message in error or "refused the connection's setup" in error, error
        else:
            assert message in error, error
        assert not pings


def test_sentinel_reader_asks_the_sentinel_for_the_master(
        served_world: ServedWorld, tmp_path: Path) -> None:
    master_port, sentinel_port = free_port(), free_port()
    sentinel_config = (f"port {sentinel_port}\nsentinel monitor feastmaster 127.0.0.1 "
                       f"{master_port} 1\nsentinel down-after-milliseconds feastmaster 5000\n")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    with redis_servers(tmp_path / "servers", [f"port {master_port}\n"]):
        _wait(redis.Redis(port=master_port).ping, "the master did not start")
        folder = tmp_path / "sentinel"
        folder.mkdir()
        (folder / "sentinel.conf").write_text(f"bind 127.0.0.1\ndir {folder}\n{sentinel_config}")
        sentinel = subprocess.Popen([binary, str(folder / "sentinel.conf"), "--sentinel"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(lambda: redis.Redis(port=sentinel_port).execute_command(
                "SENTINEL", "get-master-addr-by-name", "feastmaster"), "the sentinel did not start")
            settings = settings_on(served_world, tmp_path / "home",
                                   f"redis://127.0.0.1:{sentinel_port}/0",
                                   redis_type="redis_sentinel", redis_sentinel_master="feastmaster")
            use_case = served_world.spec.name
            materialize(settings, use_case)  # Feast: redis-py's Sentinel.master_for
            store = open_store(settings, use_case)
            reader = open_reader(settings, store)
            assert assert_reader_equals_feast(reader, store, settings, use_case) > 100
            assert redis.Redis(port=master_port).dbsize() > 100
        finally:
            sentinel.terminate()
            sentinel.wait(10)
