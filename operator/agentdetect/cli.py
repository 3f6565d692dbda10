"""The ``agentdetect`` command line."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from agentdetect import __version__, binaries, tetragon_crds
from agentdetect.controlplane import ControlPlane, ControlPlaneError, load_yaml_documents


def _cmd_binaries(args: argparse.Namespace) -> int:
    print(binaries.ensure(args.kubernetes_version).directory)
    return 0


def _cmd_control_plane(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    workdir = Path(args.workdir) if args.workdir else None
    with ControlPlane(binaries.ensure(args.kubernetes_version), workdir=workdir) as cp:
        if args.tetragon_crds:
            cp.install_crds(tetragon_crds.load())
        if args.crds:
            cp.install_crds(load_yaml_documents([Path(p) for p in args.crds]))
        print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
        print(
            f"# ready in {cp.timings['kube-controller-manager']:.1f}s; Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        stop.wait()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentdetect", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agentdetect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "binaries", help="print the directory of etcd/kube-apiserver/... building them once if needed"
    )
    p.add_argument("--kubernetes-version", default=binaries.KUBERNETES_VERSION)
    p.set_defaults(func=_cmd_binaries)

    p = sub.add_parser("control-plane", help="run an embedded control plane on loopback until interrupted")
    p.add_argument("--kubernetes-version", default=binaries.KUBERNETES_VERSION)
    p.add_argument("--workdir", help="keep etcd data, certificates, logs and kubeconfig here")
    p.add_argument("--crds", nargs="*", default=[], help="CRD YAML files to install")
    p.add_argument("--tetragon-crds", action="store_true", help="install Tetragon's TracingPolicy CRDs")
    p.set_defaults(func=_cmd_control_plane)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (binaries.BinariesError, ControlPlaneError, tetragon_crds.TetragonCRDsUnavailable) as exc:
        print(f"agentdetect: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
