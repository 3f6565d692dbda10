"""The ``agentdetect`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml

from agentdetect import __version__
from agentdetect.controller.reconcile import Config, describe_invalid, now_rfc3339, targets_for
from agentdetect.policy import yamlout
from agentdetect.policy.profiles import parse_profile
from agentdetect.policy.render import RenderError, hostnames_of, render
from agentdetect.policy.resolve import Resolver, StaticResolver, SystemResolver, resolve_all

PROFILE_KINDS = ("AgentDetectionProfile", "ClusterAgentDetectionProfile")


class CliError(Exception):
    pass


def _profile_documents(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, document) for every profile in the files, directories or "-" given."""
    files: list[Path | None] = []
    for p in paths:
        if p == "-":
            files.append(None)
        elif Path(p).is_dir():
            files.extend(sorted(q for q in Path(p).rglob("*") if q.suffix in (".yaml", ".yml")))
        else:
            files.append(Path(p))
    for f in files:
        where = "<stdin>" if f is None else str(f)
        try:
            text = sys.stdin.read() if f is None else f.read_text()
            docs = list(yaml.safe_load_all(text))
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"{where}: {exc}") from exc
        for i, doc in enumerate(docs):
            if isinstance(doc, dict) and doc.get("kind") in PROFILE_KINDS:
                name = (doc.get("metadata") or {}).get("name", f"#{i}")
                yield f"{where}: {doc['kind']}/{name}", doc


def _resolver(args: argparse.Namespace) -> Resolver:
    if args.static_hosts:
        try:
            table = yaml.safe_load(Path(args.static_hosts).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"--static-hosts {args.static_hosts}: {exc}") from exc
        if not isinstance(table, dict):
            raise CliError(f"--static-hosts {args.static_hosts}: want a mapping of hostname to addresses")
        return StaticResolver({str(k): [str(a) for a in (v or [])] for k, v in table.items()})
    return SystemResolver()


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None or value == "" else value.lower() in ("1", "true", "yes", "on")


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return default if not value else float(value)
    except ValueError:
        raise SystemExit(f"agentdetect: {name}={value!r} is not a number") from None


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    try:
        return default if not value else int(value)
    except ValueError:
        raise SystemExit(f"agentdetect: {name}={value!r} is not an integer") from None


def _env_list(name: str) -> list[str] | None:
    items = [x.strip() for x in os.environ.get(name, "").split(",") if x.strip()]
    return items or None


def _namespaces(specs: list[str]) -> list[tuple[str, dict[str, str]]]:
    out = []
    for item in specs:
        name, _, labels = item.partition(":")
        pairs = [kv.split("=", 1) for kv in labels.split(",") if kv]
        if any(len(p) != 2 for p in pairs):
            raise CliError(f"--namespace {item!r}: want NAME or NAME:key=value,key=value")
        out.append((name, {k: v for k, v in pairs}))
    return out


def _cmd_crds(args: argparse.Namespace) -> int:
    from agentdetect.local import crdgen

    files = crdgen.crds_yaml()
    if args.write:
        out = Path(args.write)
        try:
            out.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (out / name).write_text(text)
                print(out / name)
        except OSError as exc:
            raise CliError(f"crds --write {out}: {exc.strerror or exc}") from None
    else:
        print("---\n".join(files.values()), end="")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    failures = 0
    found = 0
    for where, doc in _profile_documents(args.filename):
        found += 1
        try:
            parse_profile(doc)
        except ValueError as exc:
            failures += 1
            print(f"{where}: invalid: {describe_invalid(exc)}", file=sys.stderr)
        else:
            print(f"{where}: valid")
    if not found:
        raise CliError(
            f"no AgentDetectionProfile or ClusterAgentDetectionProfile in {', '.join(args.filename)}"
        )
    return 1 if failures else 0


def _cmd_render(args: argparse.Namespace) -> int:
    _templates(args.templates)
    resolver = _resolver(args)
    namespaces = _namespaces(args.namespace)
    out: list[dict[str, Any]] = []
    failures = 0
    found = 0
    for where, doc in _profile_documents(args.filename):
        found += 1
        try:
            profile = parse_profile(doc)
        except ValueError as exc:
            failures += 1
            print(f"{where}: invalid: {describe_invalid(exc)}", file=sys.stderr)
            continue
        resolved = resolve_all(hostnames_of(profile.spec), resolver, {}, now_rfc3339())
        for res in resolved.values():
            if res.error:
                print(f"{where}: warning: {res.error}; rendered without it", file=sys.stderr)
        try:
            docs = render(profile, targets_for(profile, namespaces), resolved, args.templates)
        except RenderError as exc:
            failures += 1
            print(f"{where}: {exc}", file=sys.stderr)
            continue
        unresolved = sorted(h for h, r in resolved.items() if r.error and not r.addresses)
        if unresolved and not docs:
            failures += 1
            print(
                f"{where}: nothing rendered: every destination of it needs {', '.join(unresolved)}, "
                "which did not resolve",
                file=sys.stderr,
            )
        out.extend(docs)
    if not found:
        # An empty render must never look like "no policies wanted" to a GitOps tool.
        raise CliError(
            f"no AgentDetectionProfile or ClusterAgentDetectionProfile in {', '.join(args.filename)}"
        )
    print(yamlout.dump_all(out), end="")
    return 1 if failures else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from agentdetect.detection.aggregate import Aggregator
    from agentdetect.detection.pipeline import Pipeline, tune_gc
    from agentdetect.detection.records import detection_object
    from agentdetect.detection.sources import file_lines
    from agentdetect.policy.board import ProfileBoard, ProfileState

    resolver = _resolver(args)
    namespaces = _namespaces(args.namespace)
    board = ProfileBoard()
    for where, doc in _profile_documents(args.filename):
        try:
            profile = parse_profile(doc)
        except ValueError as exc:
            raise CliError(f"{where}: invalid: {describe_invalid(exc)}") from exc
        resolved = resolve_all(hostnames_of(profile.spec), resolver, {}, now_rfc3339())
        board.publish(ProfileState(profile, tuple(targets_for(profile, namespaces)), resolved))
    if not board.snapshot()[1]:
        raise CliError(
            f"no AgentDetectionProfile or ClusterAgentDetectionProfile in {', '.join(args.filename)}"
        )
    pipeline = Pipeline(board, Aggregator(args.max_pods))
    tune_gc()
    try:
        pipeline.feed_many(file_lines(args.events))
    except OSError as exc:
        raise CliError(f"{args.events}: {exc}") from exc
    st = pipeline.stats
    if st.events + st.ignored == 0:
        what = "is empty" if st.lines == 0 else f"has {st.lines} line(s) and none is a Tetragon JSON event"
        raise CliError(
            f"{args.events} {what} ({st.malformed} malformed, {st.truncated} truncated, "
            f"{st.unknown} unknown, {st.oversized} oversized): want Tetragon's JSON export, an event a line"
        )
    objects = [
        detection_object(k, p) for k, p in sorted(pipeline.aggregator.pods.items(), key=lambda kp: kp[0])
    ]
    if args.output == "json":
        print(orjson.dumps([o.dump() for o in objects], option=orjson.OPT_INDENT_2).decode())
    else:
        print(detections_table(objects))
    for (kind, namespace, name), host in sorted(pipeline.aggregator.host.items(), key=lambda kv: str(kv[0])):
        where = f"{namespace}/{name}" if namespace else name
        print(
            f"{kind} {where}: {host.events} events from processes outside any pod ({', '.join(host.rules)})",
            file=sys.stderr,
        )
    print(
        f"{st.lines} lines: {st.events} hook events, {pipeline.unmatched} matched no profile, "
        f"{st.ignored} other events, {st.malformed} malformed, {st.truncated} truncated, "
        f"{st.unknown} unknown, {st.oversized} oversized",
        file=sys.stderr,
    )
    return 0


def detections_table(objects: Sequence[Any]) -> str:
    """The same columns as `kubectl get agentdetections -A`."""
    rows = [("NAMESPACE", "POD", "PROFILE", "RULES", "TARGETS", "EVENTS", "LAST SEEN", "ACTION")]
    for o in objects:
        rows.append(
            (
                o.pod.namespace or "",
                o.pod.name,
                o.profile.name,
                str(o.summary.rules),
                o.summary.targets,
                str(o.summary.events),
                o.summary.last_seen or "",
                o.summary.action,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _cmd_run(args: argparse.Namespace) -> int:
    import kopf

    from agentdetect.app.runner import ServeOptions, serve
    from agentdetect.detection.pipeline import tune_gc

    # Defaults come from the environment, which argparse does not check against the choices.
    if args.log_format not in ("text", "json"):
        raise CliError(f"--log-format (AGENTDETECT_LOG_FORMAT) must be text or json, got {args.log_format!r}")
    if args.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise CliError(
            f"--log-level (AGENTDETECT_LOG_LEVEL) must be DEBUG, INFO, WARNING or ERROR, "
            f"got {args.log_level!r}"
        )
    kopf.configure(
        verbose=args.log_level == "DEBUG",
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(args.log_level)
    # urllib3 warns once per retry of every request: during an API server outage that is
    # hundreds of lines a minute. Our own messages say what failed, once a minute per kind.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    _check_positive(args, "flush_interval", "resolve_interval", "policy_filter_budget", "peering_lifetime")
    _check_ports(args)
    if args.detection_mode not in ("stream", "node"):
        raise CliError(
            "--detection-mode (AGENTDETECT_DETECTION_MODE) must be stream or node, "
            f"got {args.detection_mode!r}"
        )
    cfg = Config(
        allow_enforcement=args.allow_enforcement,
        template_dir=_templates(args.templates),
        resolver=_resolver(args),
        resolve_interval=args.resolve_interval,
        detect=args.detect,
        detection_mode=args.detection_mode,
        tetragon_namespace=args.tetragon_namespace,
        tetragon_selector=args.tetragon_selector,
        tetragon_container=args.tetragon_container,
        flush_interval=args.flush_interval,
        max_pods=args.max_pods,
        max_rules_per_pod=args.max_rules_per_pod,
        policy_filter_budget=args.policy_filter_budget,
    )
    options = ServeOptions(
        namespaces=args.namespace or None,
        peering=args.peering,
        priority=args.priority,
        peering_lifetime=args.peering_lifetime,
        health_port=args.health_port or None,
        metrics_port=args.metrics_port or None,
        bind=args.bind,
    )
    kubeconfig = Path(args.kubeconfig) if args.kubeconfig else None
    _check_kubeconfig(kubeconfig)
    for flag, port in (("--metrics-port", options.metrics_port), ("--health-port", options.health_port)):
        if port:
            _check_port(flag, args.bind, port)
    tune_gc()
    asyncio.run(serve(cfg, kubeconfig, options))
    return 0


def _check_positive(args: argparse.Namespace, *flags: str) -> None:
    for flag in flags:
        if getattr(args, flag) <= 0:
            raise CliError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")


def _check_ports(args: argparse.Namespace) -> None:
    for flag in ("metrics_port", "health_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            raise CliError(
                f"--{flag.replace('_', '-')} must be a port (0 turns it off), got {getattr(args, flag)}"
            )


def _cmd_node(args: argparse.Namespace) -> int:
    from agentdetect.app.node import run_node, stop_on_signals
    from agentdetect.detection.nodeagent import NodeSettings
    from agentdetect.detection.pipeline import tune_gc

    if args.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise CliError(
            "--log-level (AGENTDETECT_LOG_LEVEL) must be DEBUG, INFO, WARNING or ERROR, "
            f"got {args.log_level!r}"
        )
    logging.basicConfig(
        level=args.log_level,
        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":%(message)r}'
        if args.log_format == "json"
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    if not args.node_name:
        raise CliError(
            "--node-name (NODE_NAME) is required: the node whose pods this agent reports "
            "(in the DaemonSet, from the downward API: spec.nodeName)"
        )
    _check_positive(args, "flush_interval", "count_refresh", "max_pods", "max_rules_per_pod")
    _check_ports(args)
    export = Path(args.export_file)
    if not export.parent.is_dir():
        raise CliError(
            f"--export-file {export}: the directory {export.parent} does not exist (mount Tetragon's "
            "export directory from the host; Tetragon's chart default is /var/run/cilium/tetragon)"
        )
    kubeconfig = Path(args.kubeconfig) if args.kubeconfig else None
    _check_kubeconfig(kubeconfig)
    for flag, port in (("--metrics-port", args.metrics_port), ("--health-port", args.health_port)):
        if port:
            _check_port(flag, args.bind, port)
    settings = NodeSettings(
        node=args.node_name,
        export_file=export,
        flush_interval=args.flush_interval,
        count_refresh=args.count_refresh,
        max_pods=args.max_pods,
        max_rules_per_pod=args.max_rules_per_pod,
    )
    tune_gc()
    run_node(
        settings,
        kubeconfig,
        metrics_port=args.metrics_port or None,
        health_port=args.health_port or None,
        bind=args.bind,
        stop=stop_on_signals(),
    )
    return 0


def _check_kubeconfig(kubeconfig: Path | None) -> None:
    """Fail with a message, not kopf's traceback, when no cluster can be reached this way."""
    from kubernetes.config.config_exception import ConfigException

    from agentdetect.app.runner import api_client

    where = str(kubeconfig) if kubeconfig else "~/.kube/config"
    try:
        api_client(kubeconfig).close()  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        raise CliError(
            f"cannot use kubeconfig {where}: {exc}; pass --kubeconfig or set KUBECONFIG "
            "(in a pod, its ServiceAccount is used)"
        ) from None


def _check_port(flag: str, bind: str, port: int) -> None:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        raise CliError(f"{flag} {port} on {bind}: {exc.strerror or exc}") from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from agentdetect.local import demo

    if args.write_events:
        demo.write_sample_events()
        print(demo.EVENTS_FILE)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The operator runs in a thread here, so kopf cannot install signal handlers; that is expected.
    logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)
    with _local_tools():
        return demo.run(kubernetes_version=_kubernetes_version(args))


@contextlib.contextmanager
def _local_tools() -> Iterator[None]:
    """The local tooling (imported here, never by `run`): its failures become messages."""
    from agentdetect.local.binaries import BinariesError
    from agentdetect.local.controlplane import ControlPlaneError
    from agentdetect.local.tetragon_crds import TetragonCRDsUnavailable

    try:
        yield
    except (BinariesError, ControlPlaneError, TetragonCRDsUnavailable) as exc:
        raise CliError(str(exc)) from None


def _kubernetes_version(args: argparse.Namespace) -> str:
    from agentdetect.local import binaries

    return str(args.kubernetes_version or binaries.KUBERNETES_VERSION)


def _cmd_binaries(args: argparse.Namespace) -> int:
    with _local_tools():
        return _binaries(args)


def _binaries(args: argparse.Namespace) -> int:
    from agentdetect.local import binaries

    print(binaries.ensure(_kubernetes_version(args)).directory)
    if args.kwok:
        print(binaries.ensure_kwok().binary)
    if args.helm:
        print(binaries.ensure_helm())
    if args.prometheus:
        print(*binaries.ensure_prometheus(), sep="\n")
    return 0


def _cmd_control_plane(args: argparse.Namespace) -> int:
    with _local_tools():
        return _control_plane(args)


def _control_plane(args: argparse.Namespace) -> int:
    from agentdetect.local import binaries, tetragon_crds
    from agentdetect.local.controlplane import ControlPlane

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    workdir = Path(args.workdir) if args.workdir else None
    # Read everything it is asked to install before anything starts.
    crd_docs = _read_crds(args.crds)
    tetragon = tetragon_crds.load() if args.tetragon_crds else []
    with ControlPlane(binaries.ensure(_kubernetes_version(args)), workdir=workdir) as cp:
        if tetragon:
            cp.install_crds(tetragon)
        if crd_docs:
            cp.install_crds(crd_docs)
        print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
        print(
            f"# ready in {cp.timings['kube-controller-manager']:.1f}s; Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    return 0


KUBERNETES_VERSION_HELP = (
    "the Kubernetes release whose etcd, kube-apiserver, kube-controller-manager and kubectl are "
    "built from the Go module proxy (default: the release this agentdetect pins)"
)


def _kubeconfig_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="kubeconfig file (KUBECONFIG; default: in-cluster in a pod, else ~/.kube/config)",
    )


def _cap_options(p: argparse.ArgumentParser) -> None:
    """The aggregator's bounds, for the operator (stream mode) and the node agent alike."""
    p.add_argument(
        "--max-pods",
        type=int,
        default=_env_int("AGENTDETECT_MAX_PODS", 10_000),
        help="cap on (profile, pod) entries in memory (AGENTDETECT_MAX_PODS)",
    )
    p.add_argument(
        "--max-rules-per-pod",
        type=int,
        default=_env_int("AGENTDETECT_MAX_RULES_PER_POD", 64),
        help="cap on rules kept per (profile, pod) entry (AGENTDETECT_MAX_RULES_PER_POD)",
    )


def _serving_options(p: argparse.ArgumentParser) -> None:
    """/metrics, /healthz and logs: the same for the operator and the node agent."""
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_env_int("AGENTDETECT_METRICS_PORT", 8080),
        help="serve Prometheus /metrics here; 0 turns it off (AGENTDETECT_METRICS_PORT)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=_env_int("AGENTDETECT_HEALTH_PORT", 8081),
        help="serve /healthz for liveness and readiness probes; 0 turns it off (AGENTDETECT_HEALTH_PORT)",
    )
    p.add_argument(
        "--bind",
        default=os.environ.get("AGENTDETECT_BIND", "0.0.0.0"),
        help="address of both ports (AGENTDETECT_BIND)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("AGENTDETECT_LOG_FORMAT", "text"),
        help="json for production log pipelines (AGENTDETECT_LOG_FORMAT)",
    )
    p.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        default=os.environ.get("AGENTDETECT_LOG_LEVEL", "INFO").upper(),
        help="(AGENTDETECT_LOG_LEVEL)",
    )


def _kubernetes_version_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubernetes-version", default=None, help=KUBERNETES_VERSION_HELP)


def _read_crds(paths: Sequence[str]) -> list[dict[str, Any]]:
    from agentdetect.local.controlplane import load_yaml_documents

    docs: list[dict[str, Any]] = []
    for path in paths:
        try:
            found = list(load_yaml_documents([Path(path)]))
        except OSError as exc:
            raise CliError(f"--crds {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise CliError(f"--crds {path}: not YAML: {exc}") from None
        bad = [d for d in found if not isinstance(d, dict) or d.get("kind") != "CustomResourceDefinition"]
        if bad or not found:
            raise CliError(f"--crds {path}: want CustomResourceDefinition documents only")
        docs += found
    return docs


def _templates(path: Path | None) -> Path | None:
    """--templates must name a directory: a typo would silently render the built-ins."""
    if path is not None and not path.is_dir():
        raise CliError(f"--templates {path}: no such directory")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentdetect", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agentdetect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("crds", help="print the CRDs (generated from the models)")
    p.add_argument("--write", metavar="DIR", help="write one file per CRD into DIR instead")
    p.set_defaults(func=_cmd_crds)

    p = sub.add_parser("validate", help="check profiles offline; exit 1 naming each invalid field")
    p.add_argument("-f", "--filename", action="append", required=True, help="file, directory or -")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("render", help="print the Tetragon policies profiles render to (GitOps review, CMP)")
    p.add_argument("-f", "--filename", action="append", required=True, help="file, directory or -")
    p.add_argument("--templates", type=Path, help="template directory overriding the built-in templates")
    p.add_argument("--static-hosts", help="YAML mapping hostname -> [addresses] instead of DNS")
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NAME[:k=v,...]",
        help="namespaces (with labels) a ClusterAgentDetectionProfile's namespaceSelector chooses from",
    )
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("replay", help="run saved Tetragon events through the detection pipeline")
    p.add_argument("events", help="Tetragon JSON export, one event per line (- for standard input)")
    p.add_argument("-f", "--filename", action="append", required=True, help="profiles: file, directory or -")
    p.add_argument("--static-hosts", help="YAML mapping hostname -> [addresses] instead of DNS")
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NAME[:k=v,...]",
        help="namespaces (with labels) for ClusterAgentDetectionProfiles' namespaceSelector",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="table: the columns of kubectl get agentdetections; json: the AgentDetection objects",
    )
    p.add_argument("--max-pods", type=int, default=10_000, help="cap on (profile, pod) entries kept")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser(
        "run",
        help="run the operator against the cluster in KUBECONFIG or in-cluster",
        description="Every option also reads an environment variable (shown in brackets), for the chart.",
    )
    _kubeconfig_option(p)
    p.add_argument(
        "--namespace",
        action="append",
        default=_env_list("AGENTDETECT_NAMESPACES"),
        help="watch only this namespace; repeatable (AGENTDETECT_NAMESPACES, comma-separated; default: all)",
    )
    p.add_argument(
        "--allow-enforcement",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("AGENTDETECT_ALLOW_ENFORCEMENT", False),
        help="let Enforce-mode profiles render Sigkill actions (AGENTDETECT_ALLOW_ENFORCEMENT; default off)",
    )
    p.add_argument(
        "--templates",
        type=Path,
        default=os.environ.get("AGENTDETECT_TEMPLATES") or None,
        help="template directory overriding the built-in templates (AGENTDETECT_TEMPLATES)",
    )
    p.add_argument(
        "--resolve-interval",
        type=float,
        default=_env_float("AGENTDETECT_RESOLVE_INTERVAL", 300.0),
        help="seconds between DNS re-resolutions (AGENTDETECT_RESOLVE_INTERVAL)",
    )
    p.add_argument(
        "--static-hosts",
        default=os.environ.get("AGENTDETECT_STATIC_HOSTS") or None,
        help="YAML mapping hostname -> [addresses] instead of DNS (AGENTDETECT_STATIC_HOSTS)",
    )
    p.add_argument(
        "--detect",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("AGENTDETECT_DETECT", True),
        help="follow Tetragon's events and write AgentDetections (AGENTDETECT_DETECT; default on)",
    )
    p.add_argument(
        "--detection-mode",
        default=os.environ.get("AGENTDETECT_DETECTION_MODE", "stream"),
        help="stream: follow every Tetragon pod's export log through the API server; node: node "
        "agents (agentdetect node) write the AgentDetections and this operator builds profile "
        "status from them (AGENTDETECT_DETECTION_MODE; default stream)",
    )
    p.add_argument(
        "--tetragon-namespace",
        default=os.environ.get("AGENTDETECT_TETRAGON_NAMESPACE", "kube-system"),
        help="namespace of the Tetragon DaemonSet (AGENTDETECT_TETRAGON_NAMESPACE)",
    )
    p.add_argument(
        "--tetragon-selector",
        default=os.environ.get("AGENTDETECT_TETRAGON_SELECTOR", "app.kubernetes.io/name=tetragon"),
        help="label selector of the Tetragon DaemonSet's pods (AGENTDETECT_TETRAGON_SELECTOR)",
    )
    p.add_argument(
        "--tetragon-container",
        default=os.environ.get("AGENTDETECT_TETRAGON_CONTAINER", "export-stdout"),
        help="container whose log carries Tetragon's JSON events (AGENTDETECT_TETRAGON_CONTAINER)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=_env_float("AGENTDETECT_FLUSH_INTERVAL", 10.0),
        help="seconds between detection writes: one per object at most (AGENTDETECT_FLUSH_INTERVAL)",
    )
    _cap_options(p)
    p.add_argument(
        "--policy-filter-budget",
        type=int,
        default=_env_int("AGENTDETECT_POLICY_FILTER_BUDGET", 64),
        help="policies of ours that may use Tetragon's policy filter (128 per agent, shared with other "
        "tools); beyond it profiles report PolicyFilterBudget=False (AGENTDETECT_POLICY_FILTER_BUDGET)",
    )
    p.add_argument(
        "--peering",
        default=os.environ.get("AGENTDETECT_PEERING") or None,
        help="kopf peering: replicas sharing it keep one active (AGENTDETECT_PEERING; default standalone)",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=_env_int("AGENTDETECT_PRIORITY", None),
        help="peering priority; the highest live peer is active (AGENTDETECT_PRIORITY; default random)",
    )
    p.add_argument(
        "--peering-lifetime",
        type=int,
        default=_env_int("AGENTDETECT_PEERING_LIFETIME", 20),
        help="seconds a replica that stopped renewing its peering entry (killed, partitioned) still "
        "counts as live: the longest a failover waits (AGENTDETECT_PEERING_LIFETIME; default 20)",
    )
    _serving_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "node",
        help="detect on this node: read Tetragon's export file, write this node's AgentDetections",
        description="The DaemonSet of detection.mode=node. Every option also reads an environment "
        "variable (shown in brackets).",
    )
    _kubeconfig_option(p)
    p.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or None,
        help="the node this agent runs on (NODE_NAME, from the downward API)",
    )
    p.add_argument(
        "--export-file",
        default=os.environ.get("AGENTDETECT_EXPORT_FILE", "/var/run/cilium/tetragon/tetragon.log"),
        help="Tetragon's JSON export file on the host, rotated backups beside it "
        "(AGENTDETECT_EXPORT_FILE; Tetragon's chart default)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=_env_float("AGENTDETECT_FLUSH_INTERVAL", 10.0),
        help="seconds within which a new rule, target or action is written (AGENTDETECT_FLUSH_INTERVAL)",
    )
    p.add_argument(
        "--count-refresh",
        type=float,
        default=_env_float("AGENTDETECT_COUNT_REFRESH", 60.0),
        help="etcd write budget: seconds between rewrites of a record whose counts alone changed "
        "(AGENTDETECT_COUNT_REFRESH; default 60)",
    )
    _cap_options(p)
    _serving_options(p)
    p.set_defaults(func=_cmd_node)

    p = sub.add_parser(
        "binaries", help="print the directory of etcd/kube-apiserver/... building them once if needed"
    )
    _kubernetes_version_option(p)
    p.add_argument(
        "--kwok", action="store_true", help="also kwok (a fake kubelet the tests use for pod logs)"
    )
    p.add_argument("--helm", action="store_true", help="also helm (the chart tests use it)")
    p.add_argument(
        "--prometheus",
        action="store_true",
        help="also prometheus and promtool, from Debian's package (the alert and dashboard tests use them)",
    )
    p.set_defaults(func=_cmd_binaries)

    p = sub.add_parser(
        "demo",
        help="everything on this machine: embedded control plane, operator, example profiles, sample events",
    )
    _kubernetes_version_option(p)
    p.add_argument(
        "--write-events",
        action="store_true",
        help="regenerate the bundled sample of Tetragon events from the example profiles, then exit",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("control-plane", help="run an embedded control plane on loopback until interrupted")
    _kubernetes_version_option(p)
    p.add_argument("--workdir", help="keep etcd data, certificates, logs and kubeconfig here")
    p.add_argument("--crds", nargs="*", default=[], help="CRD YAML files to install")
    p.add_argument("--tetragon-crds", action="store_true", help="install Tetragon's TracingPolicy CRDs")
    p.set_defaults(func=_cmd_control_plane)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"agentdetect: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
