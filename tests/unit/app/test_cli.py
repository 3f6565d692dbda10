"""The offline commands: validate, render, crds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agentdetect.app import cli
from agentdetect.local import crdgen

GOOD = {
    "apiVersion": "agentdetect.io/v1alpha1",
    "kind": "AgentDetectionProfile",
    "metadata": {"name": "llm-egress", "namespace": "support"},
    "spec": {
        "selector": {"matchLabels": {"app": "bot"}},
        "network": {
            "providers": ["anthropic"],
            "destinations": [{"name": "gw", "hostnames": ["gw.example.com"], "ports": [443]}],
        },
        "files": {"presets": ["credentials"]},
    },
}
BAD = {
    "apiVersion": "agentdetect.io/v1alpha1",
    "kind": "AgentDetectionProfile",
    "metadata": {"name": "broken", "namespace": "support"},
    "spec": {
        "network": {"destinations": [{"name": "gw", "cidrs": ["10.0.0.0/33"], "ports": [70000]}]},
        "files": {"paths": [{"prefix": "etc/"}]},
    },
}
CLUSTER = {
    "apiVersion": "agentdetect.io/v1alpha1",
    "kind": "ClusterAgentDetectionProfile",
    "metadata": {"name": "shells"},
    "spec": {"processes": {"presets": ["shells"]}, "namespaceSelector": {"matchLabels": {"env": "prod"}}},
}
HOSTS = {"api.anthropic.com": ["160.79.104.10"], "gw.example.com": ["10.8.0.10", "2001:db8::10"]}


def _write(tmp_path: Path, name: str, *docs: Any) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def _hosts(tmp_path: Path, table: dict[str, list[str]] = HOSTS) -> str:
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump(table))
    return str(path)


# ---- validate --------------------------------------------------------------------------------


def test_validate_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "good.yaml", GOOD, CLUSTER)
    assert cli.main(["validate", "-f", path]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{path}: AgentDetectionProfile/llm-egress: valid",
        f"{path}: ClusterAgentDetectionProfile/shells: valid",
    ]
    assert err == ""


def test_validate_bad_file_names_the_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "bad.yaml", GOOD, BAD)
    assert cli.main(["validate", "-f", path]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{path}: AgentDetectionProfile/llm-egress: valid"]
    assert err.startswith(f"{path}: AgentDetectionProfile/broken: invalid: ")
    for field in (
        "spec.network.destinations[0].cidrs[0]: '10.0.0.0/33' is not a CIDR",
        "spec.network.destinations[0].ports[0]: Input should be less than or equal to 65535",
        "spec.files.paths[0]: equal and prefix paths must be absolute",
    ):
        assert field in err
    assert len(err.splitlines()) == 1


def test_validate_directory_and_other_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", "a.yaml", {"kind": "ConfigMap", "metadata": {"name": "x"}}, GOOD)
    _write(tmp_path, "b.yml", CLUSTER)
    (tmp_path / "notes.txt").write_text("kind: AgentDetectionProfile\n")
    assert cli.main(["validate", "-f", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count(": valid") == 2
    assert "notes.txt" not in out and "ConfigMap" not in out


def test_validate_without_profiles_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    assert cli.main(["validate", "-f", path]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"agentdetect: no AgentDetectionProfile or ClusterAgentDetectionProfile in {path}\n"


def test_validate_empty_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert cli.main(["validate", "-f", str(path)]) == 1
    assert "no AgentDetectionProfile or ClusterAgentDetectionProfile" in capsys.readouterr().err


def test_validate_unreadable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    assert cli.main(["validate", "-f", str(broken)]) == 1
    assert capsys.readouterr().err.startswith(f"agentdetect: {broken}: ")
    assert cli.main(["validate", "-f", str(tmp_path / "missing.yaml")]) == 1
    assert "No such file or directory" in capsys.readouterr().err


def test_validate_profile_with_empty_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``metadata:`` left empty (null) is an invalid profile to report, not a crash."""
    path = tmp_path / "nometa.yaml"
    path.write_text("kind: AgentDetectionProfile\nmetadata:\nspec:\n  files: {presets: [credentials]}\n")
    assert cli.main(["validate", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert "invalid: metadata.name: Field required" in err


# ---- render ----------------------------------------------------------------------------------


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def test_render_prints_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "good.yaml", GOOD)
    assert cli.main(["render", "-f", path, "--static-hosts", _hosts(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    docs = _docs(out)
    assert [d["kind"] for d in docs] == ["TracingPolicyNamespaced"] * 2
    assert [d["metadata"]["labels"]["agentdetect.io/hook"] for d in docs] == ["tcp_connect", "fd_install"]
    assert all(d["metadata"]["namespace"] == "support" for d in docs)
    assert all(d["spec"]["podSelector"] == {"matchLabels": {"app": "bot"}} for d in docs)
    daddr = [
        v
        for s in docs[0]["spec"]["kprobes"][0]["selectors"]
        for a in s["matchArgs"]
        if a["operator"] == "DAddr"
        for v in a["values"]
    ]
    # Each IPv4 address also as its IPv4-mapped twin, for dual-stack sockets (render.ipv4_mapped).
    assert sorted(daddr) == [
        "10.8.0.10/32",
        "160.79.104.10/32",
        "2001:db8::10/128",
        "::ffff:10.8.0.10/128",
        "::ffff:160.79.104.10/128",
    ]


def test_render_is_reproducible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["render", "-f", _write(tmp_path, "good.yaml", GOOD), "--static-hosts", _hosts(tmp_path)]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first


def test_render_warns_about_unresolved_hostnames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "good.yaml", GOOD)
    hosts = _hosts(tmp_path, {"api.anthropic.com": ["160.79.104.10"]})
    assert cli.main(["render", "-f", path, "--static-hosts", hosts]) == 0
    out, err = capsys.readouterr()
    warning = "warning: gw.example.com: not in the static table; rendered without it"
    assert err == f"{path}: AgentDetectionProfile/llm-egress: {warning}\n"
    assert "160.79.104.10/32" in out and "10.8.0.10" not in out


def test_render_cluster_profile_into_selected_namespaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "cluster.yaml", CLUSTER)
    args = ["render", "-f", path, "--namespace", "prod-a:env=prod,team=a", "--namespace", "dev:env=dev"]
    assert cli.main([*args, "--namespace", "prod-b:env=prod"]) == 0
    docs = _docs(capsys.readouterr().out)
    assert [d["kind"] for d in docs] == ["TracingPolicy"]
    (selected,) = [
        e["values"]
        for e in docs[0]["spec"]["podSelector"]["matchExpressions"]
        if e["key"] == "k8s:io.kubernetes.pod.namespace"
    ]
    assert selected == ["prod-a", "prod-b"]
    assert cli.main(["render", "-f", path]) == 0
    assert _docs(capsys.readouterr().out) == []


def test_render_bad_namespace_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "cluster.yaml", CLUSTER)
    assert cli.main(["render", "-f", path, "--namespace", "prod:env"]) == 1
    assert "--namespace 'prod:env': want NAME or NAME:key=value" in capsys.readouterr().err


def test_render_reports_invalid_profiles_and_renders_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "mixed.yaml", BAD, GOOD)
    assert cli.main(["render", "-f", path, "--static-hosts", _hosts(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "AgentDetectionProfile/broken: invalid: spec.network.destinations[0].cidrs[0]" in err
    assert [d["metadata"]["labels"]["agentdetect.io/profile-name"] for d in _docs(out)] == ["llm-egress"] * 2


def test_render_with_template_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    templates = tmp_path / "cli-templates"
    templates.mkdir()
    (templates / "fd_install.yaml.j2").write_text("not: [a, policy\n")
    path = _write(tmp_path, "good.yaml", GOOD)
    assert (
        cli.main(["render", "-f", path, "--static-hosts", _hosts(tmp_path), "--templates", str(templates)])
        == 1
    )
    out, err = capsys.readouterr()
    assert "template fd_install.yaml.j2 produced invalid YAML" in err
    assert _docs(out) == []


def test_render_bad_static_hosts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("- a\n- b\n")
    assert cli.main(["render", "-f", _write(tmp_path, "good.yaml", GOOD), "--static-hosts", str(hosts)]) == 1
    assert "want a mapping of hostname to addresses" in capsys.readouterr().err


def test_render_without_profiles_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "cm.yaml", {"kind": "ConfigMap"})
    assert cli.main(["render", "-f", path, "--static-hosts", _hosts(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "no AgentDetectionProfile or ClusterAgentDetectionProfile" in err
    assert out == ""


# ---- crds ------------------------------------------------------------------------------------


def test_crds_prints_the_profile_crds(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crds"]) == 0
    docs = _docs(capsys.readouterr().out)
    assert docs == crdgen.crds()
    kinds = [d["spec"]["names"]["kind"] for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert {"AgentDetectionProfile", "ClusterAgentDetectionProfile"} <= set(kinds)
    assert len(kinds) == len(docs)


def test_crds_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    assert cli.main(["crds", "--write", str(out_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = crdgen.crds_yaml()
    assert sorted(printed) == sorted(str(out_dir / name) for name in expected)
    assert {p.name: p.read_text() for p in out_dir.iterdir()} == expected
