"""Locate or build the Kubernetes control-plane binaries (etcd, kube-apiserver,
kube-controller-manager, kubectl).

``KUBEBUILDER_ASSETS`` wins, as in envtest, so users with downloaded binaries never
build. Otherwise the binaries are compiled from the Go module proxy into a cache
outside the repository, keyed by version, and reused on every later run.

``k8s.io/kubernetes`` cannot be ``go install``-ed: its go.mod requires the staging
modules at ``v0.0.0`` and fixes them with ``replace`` directives, which Go ignores
in dependencies. So we generate a tiny wrapper module that repeats those replaces
with the matching ``v0.35.N`` tags, plus a ``main`` for etcd's ``etcdmain``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
#: Bumped whenever the build recipe changes, so caches built by an older recipe are rebuilt.
BUILD_RECIPE = 2
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
_K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")
BUILD_INFO = "build-info.json"


class BinariesError(RuntimeError):
    """The binaries could be neither found nor built."""


@dataclass(frozen=True)
class Binaries:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def etcd(self) -> Path:
        return self.path("etcd")

    @property
    def kube_apiserver(self) -> Path:
        return self.path("kube-apiserver")

    @property
    def kube_controller_manager(self) -> Path:
        return self.path("kube-controller-manager")

    @property
    def kubectl(self) -> Path:
        return self.path("kubectl")

    def missing(self) -> list[str]:
        return [n for n in BINARIES if not os.access(self.path(n), os.X_OK)]


def cache_root() -> Path:
    base = os.environ.get("AGENTDETECT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "agentdetect"
    )
    return Path(base)


def staging_replaces(kubernetes_gomod: str, version: str) -> dict[str, str]:
    """Map each ``k8s.io/*`` module required at ``v0.0.0`` to its ``v0.MINOR.PATCH`` tag."""
    m = re.fullmatch(r"v1\.(\d+\.\d+)", version)
    if not m:
        raise BinariesError(f"unexpected Kubernetes version {version!r}, want v1.MINOR.PATCH")
    staging_tag = f"v0.{m.group(1)}"
    modules = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+)\s+v0\.0\.0\s*$", kubernetes_gomod, re.M)))
    if not modules:
        raise BinariesError("found no k8s.io/* v0.0.0 requirements in the kubernetes go.mod")
    return {mod: staging_tag for mod in modules}


def pinned_etcd(kubernetes_gomod: str) -> str:
    """The etcd server release the kubernetes go.mod pins (the one Kubernetes is tested with)."""
    m = re.search(r"^\s*go\.etcd\.io/etcd/server/v3\s+(v3\.\S+)", kubernetes_gomod, re.M)
    if not m:
        raise BinariesError("the kubernetes go.mod does not require go.etcd.io/etcd/server/v3")
    return m.group(1)


def wrapper_gomod(version: str, replaces: dict[str, str]) -> str:
    lines = [
        "module agentdetect.local/k8sbuild",
        "",
        "go 1.25.0",
        "",
        f"require k8s.io/kubernetes {version}",
        "",
        "replace (",
        *(f"\t{mod} => {mod} {tag}" for mod, tag in sorted(replaces.items())),
        ")",
        "",
    ]
    return "\n".join(lines)


ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def _ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    return env


def _run(cmd: list[str], cwd: Path, log: Path, extra_env: dict[str, str] | None = None) -> None:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        env = {**_go_env(), **(extra_env or {})}
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise BinariesError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}); log {log}:\n{tail}")


def build(version: str, dest: Path, log: Path) -> None:
    """Build the four binaries for ``version`` into ``dest`` (created atomically)."""
    if shutil.which("go") is None:
        raise BinariesError("`go` is not on PATH: install Go, or set KUBEBUILDER_ASSETS to envtest binaries")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="k8sbuild-", dir=dest.parent))
    try:
        out = subprocess.run(
            ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
            cwd=work,
            env=_go_env(),
            capture_output=True,
            text=True,
        )
        info = json.loads(out.stdout or "{}")
        if out.returncode != 0 or "GoMod" not in info:
            raise BinariesError(
                f"go mod download k8s.io/kubernetes@{version} failed: {info.get('Error') or out.stderr}"
            )
        gomod = Path(info["GoMod"]).read_text()
        replaces = staging_replaces(gomod, version)
        etcd_version = pinned_etcd(gomod)
        (work / "go.mod").write_text(wrapper_gomod(version, replaces))
        (work / "etcd").mkdir()
        (work / "etcd" / "main.go").write_text(ETCD_MAIN)
        # An explicit version: a bare `go get` would take etcd's newest release and
        # drag Kubernetes' shared dependencies up with it.
        _run(["go", "get", f"go.etcd.io/etcd/server/v3/etcdmain@{etcd_version}"], work, log)
        bin_dir = work / "bin"
        bin_dir.mkdir()
        _run(
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags",
                _ldflags(version),
                "-o",
                str(bin_dir) + "/",
                *(f"k8s.io/kubernetes/cmd/{c}" for c in _K8S_COMMANDS),
                "./etcd",
            ],
            work,
            log,
        )
        missing = Binaries(bin_dir).missing()
        if missing:
            raise BinariesError(f"build finished without {missing}; log {log}")
        (bin_dir / BUILD_INFO).write_text(
            json.dumps({"kubernetes": version, "etcd": etcd_version, "recipe": BUILD_RECIPE}) + "\n"
        )
        if dest.exists():
            shutil.rmtree(dest)
        bin_dir.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cache_current(dest: Path) -> bool:
    try:
        info = json.loads((dest / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return False
    return info.get("recipe") == BUILD_RECIPE and not Binaries(dest).missing()


#: Cold build times measured on the project's build machine (2 cores; README, Benchmarks).
COLD_BUILD_SECONDS = {"k8s": 332}


@contextlib.contextmanager
def _exclusive(lock_path: Path, what: str, quiet: bool) -> Iterator[None]:
    """Hold ``lock_path``; say so when another process holds it (a second run used to wait in
    silence for minutes)."""
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(
                    f"agentdetect: another process is building {what}; waiting for it (lock: {lock_path})",
                    file=sys.stderr,
                    flush=True,
                )
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _progress(
    what: str, log: Path, quiet: bool, estimate: float | None = None, every: float = 30.0
) -> Iterator[None]:
    """A line every ``every`` seconds while a build runs: how long so far, and the estimate."""
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(every):
            spent = time.monotonic() - started
            guess = f" of about {estimate / 60:.0f} min on 2 cores" if estimate else ""
            print(
                f"agentdetect: still building {what}: {spent / 60:.1f} min{guess} (log: {log})",
                file=sys.stderr,
                flush=True,
            )

    reporter = threading.Thread(target=report, daemon=True)
    if not quiet:
        reporter.start()
    try:
        yield
    finally:
        done.set()


def ensure(version: str = KUBERNETES_VERSION, *, quiet: bool = False) -> Binaries:
    """Return usable binaries: ``KUBEBUILDER_ASSETS`` if set, else the cache, building once."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        found = Binaries(Path(assets))
        missing = found.missing()
        if missing:
            raise BinariesError(
                f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)} "
                "(kube-controller-manager must sit beside the envtest binaries)"
            )
        return found
    dest = cache_root() / f"k8s-{version}"
    cached = Binaries(dest)
    if _cache_current(dest):
        return cached
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A concurrent run waits and reuses our build.
    with _exclusive(dest.parent / f".k8s-{version}.lock", f"Kubernetes {version}", quiet):
        if _cache_current(dest):
            return cached
        log = dest.parent / f"build-k8s-{version}.log"
        log.write_text("")
        if not quiet:
            print(
                f"agentdetect: building Kubernetes {version} binaries into {dest} (log: {log}); "
                f"a cold build took {COLD_BUILD_SECONDS['k8s'] / 60:.0f} min on 2 cores",
                file=sys.stderr,
                flush=True,
            )
        started = time.monotonic()
        with _progress(f"Kubernetes {version}", log, quiet, COLD_BUILD_SECONDS["k8s"]):
            build(version, dest, log)
        if not quiet:
            print(f"agentdetect: built in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return cached


KWOK_MODULE = "sigs.k8s.io/kwok"
KWOK_VERSION = "v0.8.0"


@dataclass(frozen=True)
class Kwok:
    """kwok (a fake kubelet, for tests that need pods Running and their logs) and its module
    source, which holds the stage definitions and CRDs it needs at run time."""

    binary: Path
    source: Path


def ensure_kwok(version: str = KWOK_VERSION, *, quiet: bool = False) -> Kwok:
    """``KWOK_BINARY``/``KWOK_SOURCE`` if set; else built once from the Go module proxy."""
    if shutil.which("go") is None and not (os.environ.get("KWOK_BINARY") and os.environ.get("KWOK_SOURCE")):
        raise BinariesError("`go` is not on PATH: install Go, or set KWOK_BINARY and KWOK_SOURCE")
    source = (
        Path(os.environ["KWOK_SOURCE"])
        if os.environ.get("KWOK_SOURCE")
        else _module_dir(KWOK_MODULE, version)
    )
    if os.environ.get("KWOK_BINARY"):
        return Kwok(Path(os.environ["KWOK_BINARY"]), source)
    return Kwok(_go_install(f"{KWOK_MODULE}/cmd/kwok", version, quiet=quiet), source)


HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"
HELM_VERSION = "v3.22.0"


def ensure_helm(version: str = HELM_VERSION, *, quiet: bool = False) -> Path:
    """``HELM`` if set; else helm built once from the Go module proxy (chart tests need it)."""
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    if shutil.which("go") is None:
        raise BinariesError("`go` is not on PATH: install Go, or set HELM to a helm binary")
    return _go_install(HELM_PACKAGE, version, quiet=quiet)


#: Debian's package: prometheus and promtool, static Go binaries. Unpacked, never installed,
#: so no service starts and no root is needed beyond what apt-get download asks.
PROMETHEUS_PACKAGE = "prometheus"


def ensure_prometheus(*, quiet: bool = False) -> tuple[Path, Path]:
    """(prometheus, promtool): ``PROMETHEUS`` and ``PROMTOOL`` if set; else Debian's package,
    downloaded once with ``apt-get download`` and unpacked into the cache."""
    if os.environ.get("PROMETHEUS") and os.environ.get("PROMTOOL"):
        return Path(os.environ["PROMETHEUS"]), Path(os.environ["PROMTOOL"])
    dest = cache_root() / "prometheus-debian"
    found = (dest / "prometheus", dest / "promtool")
    if all(os.access(b, os.X_OK) for b in found):
        return found
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise BinariesError(
                f"`{tool}` is not on PATH: Debian's prometheus package cannot be fetched; set PROMETHEUS "
                "and PROMTOOL to a prometheus and a promtool binary"
            )
    dest.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.parent / ".prometheus-debian.lock", "prometheus", quiet):
        if all(os.access(b, os.X_OK) for b in found):
            return found
        log = dest.parent / "fetch-prometheus-debian.log"
        log.write_text("")
        if not quiet:
            print(f"agentdetect: fetching Debian's {PROMETHEUS_PACKAGE} package into {dest}", file=sys.stderr)
        work = Path(tempfile.mkdtemp(prefix="prometheus-deb-", dir=dest.parent))
        try:
            _run(["apt-get", "download", PROMETHEUS_PACKAGE], work, log)
            (deb,) = work.glob(f"{PROMETHEUS_PACKAGE}_*.deb")
            _run(["dpkg-deb", "-x", str(deb), str(work / "root")], work, log)
            for binary in found:
                (work / "root" / "usr" / "bin" / binary.name).rename(binary)
            (dest / "VERSION").write_text(deb.name.split("_")[1] + "\n")
        except ValueError:
            msg = f"apt-get download {PROMETHEUS_PACKAGE} fetched no package; see {log}"
            raise BinariesError(msg) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return found


def _go_install(package: str, version: str, *, quiet: bool = False) -> Path:
    """``go install package@version`` into the cache, once (concurrent runs wait and reuse)."""
    name = package.rsplit("/", 1)[1]
    dest = cache_root() / f"{name}-{version}"
    binary = dest / name
    if os.access(binary, os.X_OK):
        return binary
    dest.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.parent / f".{name}-{version}.lock", f"{name} {version}", quiet):
        if os.access(binary, os.X_OK):
            return binary
        log = dest.parent / f"build-{name}-{version}.log"
        log.write_text("")
        if not quiet:
            print(f"agentdetect: building {name} {version} into {dest} (log: {log})", file=sys.stderr)
        started = time.monotonic()
        env_dir = Path(tempfile.mkdtemp(prefix=f"{name}build-", dir=dest.parent))
        try:
            with _progress(f"{name} {version}", log, quiet):
                _run(["go", "install", f"{package}@{version}"], env_dir, log, {"GOBIN": str(env_dir)})
            (env_dir / name).rename(binary)
        finally:
            shutil.rmtree(env_dir, ignore_errors=True)
        if not quiet:
            print(f"agentdetect: built {name} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return binary


def _module_dir(module: str, version: str) -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        env=_go_env(),
        capture_output=True,
        text=True,
    )
    try:
        info = json.loads(out.stdout or "{}")
    except ValueError:
        info = {}
    if out.returncode != 0 or "Dir" not in info:
        raise BinariesError(f"go mod download {module}@{version} failed: {info.get('Error') or out.stderr}")
    return Path(info["Dir"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    try:
        found = ensure(args.version)
    except BinariesError as exc:
        print(f"agentdetect: {exc}", file=sys.stderr)
        return 1
    print(found.directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
