"""`teal run`: start the operator."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import kopf

    from . import leases
    from .client import Client
    from .controller import Controller, Settings


def _env_list(name: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, "").split(",") if x.strip()]


def _routers(value: str) -> tuple[str, ...]:
    """'gatewayAPI,nginx' -> ('gatewayAPI', 'nginx'); '' or 'none' -> ()."""
    from .api import ROUTER_KINDS

    names = [x.strip() for x in value.split(",") if x.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in ROUTER_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown traffic router {', '.join(unknown)}: choose from {', '.join(ROUTER_KINDS)}, or none"
        )
    return tuple(dict.fromkeys(names))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="teal", description="Teal: blue/green releases for Kubernetes")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=_env_list("TEAL_NAMESPACES"),
        help="watch this namespace (repeat for more); default: all namespaces",
    )
    run.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    run.add_argument(
        "--prometheus-address",
        default=os.environ.get("TEAL_PROMETHEUS_ADDRESS"),
        help="Prometheus used when a Rollout names none",
    )
    run.add_argument(
        "--routers",
        type=_routers,
        default=os.environ.get("TEAL_ROUTERS", "gatewayAPI,nginx,istio"),
        help="traffic routers to use and whose routes to watch, comma-separated (gatewayAPI, nginx, "
        "istio, or none); give only those the operator's RBAC covers. Default: TEAL_ROUTERS, else all",
    )
    run.add_argument(
        "--log-level", default=os.environ.get("TEAL_LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"]
    )
    run.add_argument("--log-format", default=os.environ.get("TEAL_LOG_FORMAT", "text"), choices=["text", "json"])
    _lease_arguments(run)
    run.add_argument("--liveness-port", type=int, default=int(os.environ.get("TEAL_LIVENESS_PORT", "8080")))
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("TEAL_METRICS_PORT", "9090")),
        help="0 disables the metrics endpoint",
    )
    run.add_argument(
        "--notifications-config",
        default=os.environ.get("TEAL_NOTIFICATIONS_CONFIG") or None,
        metavar="NAMESPACE/NAME",
        help="the ConfigMap with the notification targets (docs/notifications.md); default: TEAL_NOTIFICATIONS_CONFIG, else none",
    )
    return p


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _env_list("TEAL_DEBUG_LOGGERS"):  # e.g. teal.writes, teal.leases
        logging.getLogger(name).setLevel(logging.DEBUG)
    if level != "debug":
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.WARNING)


def settings_from(args: argparse.Namespace) -> Settings:
    """The operator's settings, from the command line (and the environment defaults it read)."""
    from .controller import Settings

    namespaces = [] if args.all_namespaces else list(dict.fromkeys(args.namespace))
    return Settings(
        namespaces=namespaces,
        prometheus_address=args.prometheus_address,
        leases=lease_config(args, namespaces),
        identity=args.identity,
        routers=args.routers,
        notifications_config=args.notifications_config,
    )


def lease_config(args: argparse.Namespace, namespaces: list[str]) -> leases.Config | None:
    """Leases when --leader-elect or --shards > 1 (or the deprecated --peering) asks for them."""
    from . import leases

    log = logging.getLogger("teal")
    if args.peering:
        log.warning(
            "--peering/TEAL_PEERING is deprecated (kopf peering is gone): using --leader-elect --lease-name %s", args.peering
        )
    if args.priority is not None:
        log.warning("--priority/TEAL_PRIORITY is deprecated and ignored: Lease holders are not chosen by priority")
    if args.shards < 1:
        raise SystemExit("teal run: --shards must be at least 1")
    if not (args.leader_elect or args.peering or args.shards > 1):
        return None
    namespace = args.lease_namespace or os.environ.get("POD_NAMESPACE") or (namespaces[0] if len(namespaces) == 1 else "default")
    timing = leases.Timing(args.lease_duration, args.renew_deadline, args.retry_period)
    return leases.Config(args.peering or args.lease_name, namespace, args.identity, args.shards, timing)


def _lease_arguments(run: argparse.ArgumentParser) -> None:
    from .leases import Timing, own_identity

    env = os.environ.get
    run.add_argument(
        "--leader-elect",
        action="store_true",
        default=_env_flag("TEAL_LEADER_ELECT"),
        help="several replicas: only the holder of a Lease acts (implied by --shards > 1); default: TEAL_LEADER_ELECT",
    )
    run.add_argument(
        "--shards",
        type=int,
        default=int(env("TEAL_SHARDS", "1")),
        help="split namespaces into this many shards, each held by one replica through its own Lease; default: TEAL_SHARDS, else 1",
    )
    run.add_argument("--lease-name", default=env("TEAL_LEASE_NAME", "teal"), help="Leases <name>-<shard>; default: teal")
    run.add_argument(
        "--lease-namespace",
        default=env("TEAL_LEASE_NAMESPACE"),
        help="namespace of the Leases; default: POD_NAMESPACE, else the one watched namespace, else default",
    )
    run.add_argument(
        "--identity", default=own_identity(), help="this replica's holder identity; default: POD_ID, else user@host/pid"
    )
    t = Timing()
    run.add_argument(
        "--lease-duration", type=float, default=t.lease_duration, help="seconds before an unrenewed Lease is taken over"
    )
    run.add_argument(
        "--renew-deadline", type=float, default=t.renew_deadline, help="seconds a holder acts without a successful renew"
    )
    run.add_argument("--retry-period", type=float, default=t.retry_period, help="seconds between renews and attempts to acquire")
    run.add_argument("--peering", default=env("TEAL_PEERING"), help=argparse.SUPPRESS)  # deprecated: --leader-elect --lease-name
    run.add_argument("--priority", type=int, default=env("TEAL_PRIORITY") or None, help=argparse.SUPPRESS)  # deprecated, ignored


def build(settings: Settings, client: Client | None = None) -> tuple[Controller, kopf.OperatorRegistry]:
    """The Controller on its own Kubernetes client (in-cluster credentials, else the kubeconfig),
    and a kopf registry with its handlers; kopf logs in through the kubernetes package too."""
    import kopf

    from . import metrics
    from .client import REQUEST_OBSERVERS, Client
    from .controller import Controller, informers_for, registry
    from .informer import CachingClient
    from .kube import TIMEOUT, Kube

    # The informers' watch streams hold a connection each for as long as they run (about ten kinds per
    # watched namespace, Secrets one by one): room for them beside the workers' requests, or urllib3
    # opens (and throws away after one request) a new TLS connection whenever the pool is full.
    watches = 10 * max(1, len(settings.namespaces)) + 8
    client = client or Client.auto(timeout=TIMEOUT, pool_size=settings.api_workers + watches)
    if metrics.count_request not in REQUEST_OBSERVERS:
        REQUEST_OBSERVERS.append(metrics.count_request)  # teal_api_requests_total{verb,resource}
    # Reads come from Teal's informers (teal.informer), writes go to the apiserver through them.
    ctl = Controller(Kube(CachingClient(client, informers_for(client, settings))), settings)
    reg = registry(ctl)
    kopf.on.login(registry=reg)(kopf.login_via_client)
    return ctl, reg


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    import kopf

    from . import kopf_compat, metrics

    settings = settings_from(args)
    _, reg = build(settings)
    logging.getLogger("teal").info("traffic routers in use (their routes are watched): %s", ", ".join(settings.routers) or "none")
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    kopf_compat.install()  # a watch error other than 410 Gone restarts the watch, not the process
    kopf.run(
        registry=reg,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=True,  # no kopf peering: Teal's Leases decide who acts (teal.leases)
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
