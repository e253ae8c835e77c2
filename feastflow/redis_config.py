"""How to reach the Redis online store, in the terms Feast's Redis store uses.

Feast's `RedisOnlineStoreConfig` takes `redis_type` (`redis`, `redis_cluster`, `redis_sentinel`),
`sentinel_master` and a `connection_string` of `host:port` nodes and `name=value` options that it
hands to redis-py (`db`, `username`, `password`, `ssl`, `ssl_ca_certs`, `ssl_certfile`,
`ssl_keyfile`, `ssl_cert_reqs`, `ssl_check_hostname`, ...). `REDIS_URL` may be that connection
string verbatim, or a URL:

    redis[s]://[[username]:password@]host[:port][,host[:port]...][/db][?option=value&...]

(`rediss://` turns TLS on; several hosts are a cluster's seed nodes or a Sentinel's sentinels).
`RedisConfig` is the one parsed form: feastflow's reader connects from it and Feast's
connection string is rendered from it, so both talk to the same servers the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from ssl import CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED, SSLContext, create_default_context
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote

if TYPE_CHECKING:
    import redis

RedisType = Literal["redis", "redis_cluster", "redis_sentinel"]
REDIS_TYPES: tuple[str, ...] = ("redis", "redis_cluster", "redis_sentinel")
CERT_REQS = {"none": CERT_NONE, "optional": CERT_OPTIONAL, "required": CERT_REQUIRED}
# Options redis-py (and so Feast) takes that only tune its own client: passed on to Feast's
# connection string, not used by feastflow's reader.
CLIENT_TUNING = frozenset({"socket_timeout", "socket_connect_timeout", "socket_keepalive",
                           "health_check_interval", "max_connections", "retry_on_timeout",
                           "skip_full_coverage_check", "client_name", "read_from_replicas"})
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclass(frozen=True)
class RedisConfig:
    """One Redis deployment: its nodes, type, database, ACL credentials and TLS settings."""

    nodes: tuple[tuple[str, int], ...]  # the server; a cluster's seeds; the sentinels
    redis_type: RedisType = "redis"
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"  # redis-py's default
    ssl_check_hostname: bool = True  # redis-py's default (off when cert_reqs is none)
    sentinel_master: str = "mymaster"
    tuning: tuple[tuple[str, str], ...] = field(default=())  # CLIENT_TUNING options, as given

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("REDIS_URL names no host")
        if self.redis_type not in REDIS_TYPES:
            raise ValueError(f"redis_type must be one of {', '.join(REDIS_TYPES)}, "
                             f"got {self.redis_type!r}")
        if self.ssl_cert_reqs not in CERT_REQS:
            raise ValueError(f"ssl_cert_reqs must be one of {', '.join(CERT_REQS)}, "
                             f"got {self.ssl_cert_reqs!r}")
        if self.redis_type == "redis_cluster" and self.db:
            raise ValueError(f"a Redis Cluster has only database 0, REDIS_URL asks for {self.db}")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile is set without ssl_certfile (the client certificate)")
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path}")

    def with_files(self, ca_certs: Path | None, certfile: Path | None, keyfile: Path | None
                   ) -> RedisConfig:
        """These settings with certificate files given apart from the URL (they win)."""
        return replace(self, ssl_ca_certs=_str(ca_certs) or self.ssl_ca_certs,
                       ssl_certfile=_str(certfile) or self.ssl_certfile,
                       ssl_keyfile=_str(keyfile) or self.ssl_keyfile)

    def ssl_context(self) -> SSLContext | None:
        """The TLS context redis-py would build from the same options; None without TLS."""
        if not self.ssl:
            return None
        context = create_default_context(cafile=self.ssl_ca_certs)
        verify = CERT_REQS[self.ssl_cert_reqs]
        context.check_hostname = self.ssl_check_hostname and verify != CERT_NONE
        context.verify_mode = verify
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def client_options(self) -> dict[str, Any]:
        """redis-py's keyword arguments for these credentials and TLS settings (not the nodes)."""
        options: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.ssl:
            options.update(ssl=True, ssl_ca_certs=self.ssl_ca_certs, ssl_certfile=self.ssl_certfile,
                           ssl_keyfile=self.ssl_keyfile, ssl_cert_reqs=self.ssl_cert_reqs,
                           ssl_check_hostname=self.ssl_check_hostname
                           and self.ssl_cert_reqs != "none")
        return options

    def feast_connection_string(self) -> str:
        """Feast's `connection_string` for the same servers, credentials and TLS."""
        parts = [f"{host}:{port}" for host, port in self.nodes]
        if self.redis_type != "redis_cluster":  # redis-py's RedisCluster refuses `db`
            parts.append(f"db={self.db}")
        options: dict[str, Any] = {
            "username": self.username, "password": self.password,
            "ssl": "true" if self.ssl else None,
            "ssl_ca_certs": self.ssl_ca_certs, "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_cert_reqs": self.ssl_cert_reqs if self.ssl and self.ssl_cert_reqs != "required"
            else None,
            "ssl_check_hostname": "false" if self.ssl and not self.ssl_check_hostname else None,
        }
        for name, value in [*options.items(), *self.tuning]:
            if value is None:
                continue
            if "," in str(value):  # Feast splits the string on commas
                raise ValueError(f"{name} cannot hold a comma in Feast's connection string")
            parts.append(f"{name}={value}")
        return ",".join(parts)


def parse_redis(text: str, redis_type: str = "redis", sentinel_master: str = "mymaster"
                ) -> RedisConfig:
    """A RedisConfig from `REDIS_URL`: a redis:// or rediss:// URL, or Feast's connection string."""
    if "://" in text:
        nodes, options = _parse_url(text)
    else:
        nodes, options = _parse_connection_string(text)
    known = {"db", "username", "password", "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
             "ssl_cert_reqs", "ssl_check_hostname"}
    unknown = sorted(set(options) - known - CLIENT_TUNING)
    if unknown:
        raise ValueError(f"REDIS_URL: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known | CLIENT_TUNING))})")
    try:
        db = int(options.get("db") or 0)
    except ValueError:
        raise ValueError(f"REDIS_URL: db must be a number, got {options['db']!r}") from None
    return RedisConfig(
        nodes=nodes, redis_type=redis_type, db=db,  # type: ignore[arg-type]  # checked in the class
        username=options.get("username") or None, password=options.get("password") or None,
        ssl=_flag("ssl", options.get("ssl", "false")),
        ssl_ca_certs=options.get("ssl_ca_certs"), ssl_certfile=options.get("ssl_certfile"),
        ssl_keyfile=options.get("ssl_keyfile"),
        ssl_cert_reqs=options.get("ssl_cert_reqs", "required"),
        ssl_check_hostname=_flag("ssl_check_hostname", options.get("ssl_check_hostname", "true")),
        sentinel_master=sentinel_master,
        tuning=tuple((k, v) for k, v in options.items() if k in CLIENT_TUNING),
    )


def _parse_url(text: str) -> tuple[tuple[tuple[str, int], ...], dict[str, str]]:
    scheme, rest = text.split("://", 1)
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"REDIS_URL must start with redis:// or rediss://, got {scheme}://")
    rest, _, query = rest.partition("?")
    location, _, path = rest.partition("/")
    options: dict[str, str] = dict(parse_qsl(query, keep_blank_values=True))
    credentials, at, hosts = location.rpartition("@")
    if at:
        username, colon, password = credentials.partition(":")
        if not colon:  # redis://secret@host: redis-py reads a lone word as the password
            username, password = "", username
        if username:
            options["username"] = unquote(username)
        if password:
            options["password"] = unquote(password)
    if path:
        options["db"] = path
    if scheme == "rediss":
        options["ssl"] = "true"
    return _nodes(hosts.split(",")), options


def _parse_connection_string(text: str) -> tuple[tuple[tuple[str, int], ...], dict[str, str]]:
    # Feast's RedisOnlineStore._parse_connection_string: items without "=" are nodes.
    items = [item.strip() for item in text.split(",") if item.strip()]
    options = {}
    for item in items:
        if "=" in item:
            name, value = item.split("=", 1)
            options[name] = _json_text(value)
    return _nodes([item for item in items if "=" not in item]), options


def _json_text(value: str) -> str:
    # Feast json-decodes option values (`ssl=true` is True, `password=123` is 123).
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value
    if isinstance(decoded, bool):
        return "true" if decoded else "false"
    return str(decoded)


def _nodes(items: list[str]) -> tuple[tuple[str, int], ...]:
    nodes = []
    for item in items:
        if not item:
            continue
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, "6379"
        host = host.strip("[]") or "localhost"
        if not port.isdigit():
            raise ValueError(f"REDIS_URL: the port of {item!r} is not a number")
        nodes.append((host, int(port)))
    return tuple(nodes)


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"REDIS_URL: {name} must be true or false, got {value!r}")


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


def sync_client(config: RedisConfig, **options: Any) -> redis.Redis:
    """A redis-py client for `config`, as Feast's Redis store makes its own: `RedisCluster` for a
    cluster, the master `Sentinel` names for a sentinel deployment, else `Redis`; `options` tune
    it (timeouts, retry). A `RedisCluster` answers the commands of `Redis` on single-slot keys."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel

    kwargs = {**config.client_options(), **options}
    if config.redis_type == "redis_cluster":
        cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in config.nodes],
                               **kwargs)
        return cluster  # type: ignore[return-value]  # same commands, single-slot keys
    if config.redis_type == "redis_sentinel":
        sentinel = Sentinel(list(config.nodes), **kwargs)
        return sentinel.master_for(config.sentinel_master, db=config.db)
    host, port = config.nodes[0]
    return redis.Redis(host=host, port=port, db=config.db, **kwargs)
