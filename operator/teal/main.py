"""`teal run`: start the operator."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import kopf

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


def _default_priority() -> int:
    """kopf freezes every replica whose priority equals another's: derive distinct ones."""
    if os.environ.get("TEAL_PRIORITY"):
        return int(os.environ["TEAL_PRIORITY"])
    pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or ""
    if not pod:
        return 0
    return 1 + int(hashlib.sha256(pod.encode()).hexdigest()[:6], 16)


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
    run.add_argument(
        "--peering", default=os.environ.get("TEAL_PEERING"), help="kopf peering name: several replicas elect one active operator"
    )
    run.add_argument(
        "--priority",
        type=int,
        default=_default_priority(),
        help="peering priority; default: TEAL_PRIORITY, else derived from POD_NAME so replicas differ",
    )
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
    if level != "debug":
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.WARNING)


def settings_from(args: argparse.Namespace) -> Settings:
    """The operator's settings, from the command line (and the environment defaults it read)."""
    from .controller import Settings
    from .peering import own_identity

    return Settings(
        namespaces=[] if args.all_namespaces else list(dict.fromkeys(args.namespace)),
        prometheus_address=args.prometheus_address,
        peering_name=args.peering,
        priority=args.priority,
        identity=own_identity(),
        routers=args.routers,
        notifications_config=args.notifications_config,
    )


def build(settings: Settings) -> tuple[Controller, kopf.OperatorRegistry]:
    """The Controller on its own Kubernetes client (in-cluster credentials, else the kubeconfig),
    and a kopf registry with its handlers; kopf logs in through the kubernetes package too."""
    import kopf

    from .client import Client
    from .controller import Controller, registry
    from .kube import TIMEOUT, Kube

    ctl = Controller(Kube(Client.auto(timeout=TIMEOUT, pool_size=settings.api_workers)), settings)
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
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority,
        identity=settings.identity,  # type: ignore[arg-type]  # kopf.Identity (a NewType of str) is not exported
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
