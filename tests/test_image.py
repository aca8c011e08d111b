"""The operator image: built here without a container engine (hack/build-image.sh), the same digest
for the same inputs, in the layout `docker load`, `kind load image-archive` and `crane push` read,
operator/Dockerfile describing the same image -- and run as the chart runs it: unpacked, as uid
65532, on a read-only root with a tmpfs /tmp, with nothing but the chart's ServiceAccount token,
it completes a release against the local control plane."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import urllib.request
import uuid
from pathlib import Path

import kubernetes
import pytest
import yaml

from cli_helpers import installed_chart, run
from image_helpers import ImageProcess, build_image, crane_binary, oci, proc_status, root_mount_options, snapshot_sources, unpack
from operator_helpers import Env
from teal_devenv.procs import free_port
from teal_devenv.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = dict(re.findall(r"^(\w+)=(\S*)", (ROOT / "hack" / "versions.env").read_text(), re.M))
EPOCH = int(VERSIONS["IMAGE_SOURCE_DATE_EPOCH"])

# Building from a cold cache downloads Debian packages and wheels and compiles them (minutes on shared
# cores), so even the checks that need no control plane stay out of `make test-fast`.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


def _say(message: str) -> None:
    """Past pytest's capture: the figures the issue asks to be printed."""
    sys.__stderr__.write(f"\n[test_image] {message}\n")
    sys.__stderr__.flush()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("building and running the image needs root (chroot, mount namespaces)")
    out = tmp_path_factory.mktemp("image") / "teal-image.oci.tar"
    info = build_image(out)
    info["path"] = out
    info["read"] = oci.read_archive(out)
    _say(
        f"{info['ref']} {info['digest']}: {info['compressed_size'] / 1e6:.1f} MB compressed, "
        f"{info['uncompressed_size'] / 1e6:.1f} MB uncompressed, built in {info['seconds']}s (cache {info['cache']})"
    )
    return info


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory) -> Path:
    """The image's layers applied in order, as a container runtime would."""
    path = tmp_path_factory.mktemp("unpacked") / "rootfs"
    unpack(image["path"], path)
    return path


def layer_members(image) -> list[list[tarfile.TarInfo]]:
    out = []
    with tarfile.open(image["path"]) as outer:
        for name in image["read"]["layer_blobs"]:
            with tarfile.open(fileobj=outer.extractfile(name), mode="r:gz") as layer:
                out.append(layer.getmembers())
    return out


# ---------------------------------------------------------------- offline: the archive


def test_archive_has_what_docker_containerd_and_crane_read(image):
    read = image["read"]  # read_archive verified every blob's digest and size, and the diff_ids
    ref = image["ref"]
    entry = read["index"]["manifests"][0]
    assert entry["mediaType"] == oci.MT_MANIFEST
    assert entry["annotations"]["io.containerd.image.name"] == ref  # the name `kind load` / ctr import gives
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == ref.rsplit(":", 1)[1]
    assert read["docker_manifest"][0]["RepoTags"] == [ref]  # `docker load` (before 25) and crane's tarball reader
    assert [x["mediaType"] for x in read["manifest"]["layers"]] == [oci.MT_LAYER] * 3
    assert read["config"]["architecture"] == entry["platform"]["architecture"]
    assert image["digest"] == entry["digest"]
    # the name is the one the chart pulls by default
    values = yaml.safe_load((ROOT / "charts/teal/values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "charts/teal/Chart.yaml").read_text())
    assert ref == f"{values['image']['repository']}:{chart['appVersion']}"


def test_config_runs_teal_run_as_65532_from_tmp(image):
    config = image["read"]["config"]["config"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["teal"] and config["Cmd"] == ["run"]
    assert config["WorkingDir"] == "/tmp"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PATH"].split(":")[0] == "/opt/teal/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["HOME"] == "/tmp"
    assert set(config["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}
    assert config["Labels"]["org.opencontainers.image.version"] == version
    created = datetime.datetime.fromtimestamp(EPOCH, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert image["read"]["config"]["created"] == created == config["Labels"]["org.opencontainers.image.created"]


def test_layers_are_normalised_and_hold_the_runtime_only(image):
    layers = layer_members(image)
    names = [m.name for layer in layers for m in layer]
    for layer in layers:
        ordered = [m.name.rstrip("/") for m in layer]
        assert ordered == sorted(ordered, key=lambda s: s.encode()), "entries are not in a stable order"
        plain = lambda m: m.isdir() or m.isfile() or m.issym() or m.islnk()  # noqa: E731
        odd = [m.name for m in layer if m.mtime != EPOCH or m.uname or m.gname or not plain(m)]
        assert not odd, f"entries with a time other than the epoch, user names or special files: {odd[:5]}"
        assert not [m.name for m in layer if "/.wh." in "/" + m.name], "whiteouts in a layer"
    top = {m.name for m in layers[2]}
    assert "opt/teal/bin/teal" in top and "opt/teal/bin/kubectl-teal" in top
    assert "usr/share/teal/packages.txt" in top
    assert not [n for n in names if n.endswith(".pyc") and "__pycache__" not in n]
    # no shell, no package manager: only what Python needs
    assert not {"bin/sh", "bin/bash", "usr/bin/apt", "usr/bin/dpkg"} & set(names)
    # the bytecode is unchecked-hash (flags == 1): never compared with a source mtime, never rewritten
    with tarfile.open(image["path"]) as outer:
        blob = outer.extractfile(image["read"]["layer_blobs"][2])
        with tarfile.open(fileobj=blob, mode="r:gz") as layer:
            pycs = [m for m in layer.getmembers() if m.name.endswith(".pyc")]
            assert pycs
            flags = {int.from_bytes(layer.extractfile(m).read(8)[4:8], "little") for m in pycs}
    assert flags == {1}, f"pyc flags {flags}"
    devenv = [n for n in names if re.search(r"/site-packages/teal(_|/)devenv/", n)]
    assert not devenv, f"the dev environment (teal_devenv) is inside the image: {devenv[:5]}"
    _say("teal_devenv (test/dev code) is not in the image")


def test_image_user_exists_and_root_is_not_writable_by_it(rootfs):
    assert "teal:x:65532:65532:" in (rootfs / "etc/passwd").read_text()
    owners = {(p.stat().st_uid) for p in [rootfs / "opt/teal", rootfs / "usr", rootfs / "etc"]}
    assert owners == {0}
    assert (rootfs / "tmp").stat().st_mode & 0o1777 == 0o1777
    assert "teal-operator==" in (rootfs / "usr/share/teal/packages.txt").read_text()


def test_second_build_gives_the_same_digest(image, tmp_path):
    src = snapshot_sources(tmp_path / "src")  # the work tree may change while this runs
    first = build_image(tmp_path / "first.oci.tar", repo=src)
    again = build_image(tmp_path / "again.oci.tar", repo=src)  # warm: the cached archive
    assert again["cache"]["image"] and again["digest"] == first["digest"]
    # Teal's layer built afresh (new wheel, pip install, bytecode) on the cached Debian and
    # dependency layers: the same bytes again
    cache = Path(os.environ.get("TEAL_CACHE") or Path.home() / ".cache/teal") / "image"
    fresh = tmp_path / "cache"
    (fresh / "image").mkdir(parents=True)
    for entry in cache.iterdir():
        if entry.name.startswith(("base-", "deps-", "tools-", "downloads")):
            subprocess.run(["cp", "-al", str(entry), str(fresh / "image" / entry.name)], check=True)
    rebuilt = build_image(tmp_path / "rebuilt.oci.tar", env={"TEAL_CACHE": str(fresh)}, repo=src)
    assert rebuilt["cache"] == {"base": True, "deps": True, "image": False}
    assert rebuilt["digest"] == first["digest"], "the same inputs gave another image"
    _say(f"rebuilt Teal's layer in {rebuilt['seconds']}s: same digest {rebuilt['digest']}")


def test_crane_validates_the_archive_and_a_registry_keeps_its_digest(image, tmp_path):
    """go-containerregistry (crane push's code) reads the archive; pushed as an OCI layout the
    registry serves the very manifest built here, pushed as a docker tarball the same config and layers."""
    crane = crane_binary()
    run([crane, "validate", "--tarball", str(image["path"])])
    port = free_port()
    registry = subprocess.Popen(
        [crane, "registry", "serve", "--address", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        repo = f"127.0.0.1:{port}/teal"
        wait_for(
            lambda: run([crane, "catalog", "--insecure", f"127.0.0.1:{port}"], check=False).returncode == 0,
            timeout=30,
            what="crane's registry",
        )
        layout = tmp_path / "layout"
        with tarfile.open(image["path"]) as tar:
            tar.extractall(layout, filter="data")
        run([crane, "push", "--insecure", str(layout), f"{repo}:layout"])
        assert run([crane, "digest", "--insecure", f"{repo}:layout"]).stdout.strip() == image["digest"]
        run([crane, "validate", "--insecure", "--remote", f"{repo}:layout"])
        run([crane, "push", "--insecure", str(image["path"]), f"{repo}:tarball"])
        pushed = json.loads(run([crane, "manifest", "--insecure", f"{repo}:tarball"]).stdout)
        ours = image["read"]["manifest"]
        assert pushed["config"]["digest"] == ours["config"]["digest"]
        assert [x["digest"] for x in pushed["layers"]] == [x["digest"] for x in ours["layers"]]
    finally:
        registry.terminate()
        registry.wait(10)


# ---------------------------------------------------------------- offline: operator/Dockerfile


def _dockerfile_runtime() -> dict[str, list[str]]:
    """The runtime stage's instructions (continuation lines joined)."""
    text = (ROOT / "operator/Dockerfile").read_text()
    lines = re.sub(r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stage = lines.split("AS runtime", 1)[1]
    out: dict[str, list[str]] = {}
    for line in stage.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_dockerfile_builds_the_same_layout(image):
    config = image["read"]["config"]["config"]
    df = _dockerfile_runtime()
    env = dict(kv.split("=", 1) for line in df["ENV"] for kv in line.split())
    assert env == dict(e.split("=", 1) for e in config["Env"])
    assert df["USER"] == [config["User"]] and df["WORKDIR"] == [config["WorkingDir"]]
    assert json.loads(df["ENTRYPOINT"][0]) == config["Entrypoint"] and json.loads(df["CMD"][0]) == config["Cmd"]
    assert {f"{p}/tcp" for p in df["EXPOSE"][0].split()} == set(config["ExposedPorts"])
    labels = dict(re.findall(r'(\S+)="([^"]*)"', df["LABEL"][0]))
    version = re.search(r"ARG VERSION=(\S+)", (ROOT / "operator/Dockerfile").read_text()).group(1)
    labels = {k: v.replace("${VERSION}", version) for k, v in labels.items()}
    assert labels.items() <= config["Labels"].items()
    assert "COPY --from=builder /opt/teal /opt/teal" in [f"COPY {c}" for c in df["COPY"]]
    assert any("--uid 65532" in r and "--gid 65532" in r for r in df["RUN"])
    # the same Debian Python, and the same parts of the wheels left out
    full = (ROOT / "operator/Dockerfile").read_text()
    assert "python3.11-minimal libpython3.11-stdlib libstdc++6" in full
    sys.path.insert(0, str(ROOT / "hack/image"))
    import build  # noqa: E402  hack/image/build.py

    for rel in build.SITE_PRUNE:
        assert f"site-packages/{rel}" in full
    # every file the Dockerfile copies from the context is let through .dockerignore
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", full, re.M):
        for path in src.split():
            assert f"!{path}" in ignore or f"!{path.rstrip('/')}/" in ignore, f"{path} is not in the build context"


def test_operator_never_imports_kubernetes_aio():
    """hack/image/build.py leaves kubernetes/aio out of the image (a third of its size)."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "operator").rglob("*.py")
        if re.search(r"kubernetes\.aio|from kubernetes import .*\baio\b", p.read_text())
    ]
    assert not offenders


# ---------------------------------------------------------------- the image, run


def snapshot(rootfs: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, size, mtime) of every path: what a write anywhere would change."""
    out = {}
    for rel in oci.tree_paths(rootfs):
        st = os.lstat(rootfs / rel)
        out[rel] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_image_completes_a_release_as_65532_on_a_read_only_root(
    image, rootfs, cluster, k8s, helm, chart_dir, teal_crds, no_operator, tmp_path
):
    # in-cluster credentials exactly as a kubelet mounts them, for the chart's ServiceAccount
    ca = Path(cluster.ca_file)
    san = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(ca.parent / "apiserver.crt")],
        capture_output=True,
        text=True,
    ).stdout
    assert "IP Address:127.0.0.1" in san, f"the apiserver's serving certificate does not cover 127.0.0.1: {san}"
    core = kubernetes.client.CoreV1Api(k8s)
    tag = uuid.uuid4().hex[:6]
    op_ns, app_ns = f"teal-system-{tag}", f"shop-{tag}"
    for ns in (op_ns, app_ns):
        core.create_namespace({"metadata": {"name": ns}})
    sets = ["rbac.scope=namespaced", f"watchNamespaces={{{app_ns}}}"]
    try:
        with installed_chart(helm, chart_dir, cluster, k8s, op_ns, *sets) as chart:
            secrets = tmp_path / "serviceaccount"
            secrets.mkdir()
            (secrets / "token").write_text(chart.token)
            shutil.copy(ca, secrets / "ca.crt")
            (secrets / "namespace").write_text(op_ns)
            liveness = free_port()
            env = {
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(cluster.apiserver_port),
                "POD_NAME": f"teal-{tag}",
                "POD_ID": f"teal-{tag}",
                "POD_NAMESPACE": op_ns,
                "HOSTNAME": f"teal-{tag}",
                "TEAL_NAMESPACES": app_ns,
                "TEAL_LIVENESS_PORT": str(liveness),
                "TEAL_METRICS_PORT": str(free_port()),
            }
            op = ImageProcess(rootfs, image["read"]["config"]["config"], env, secrets, tmp_path / "image.log")
            op.start()
            before = snapshot(rootfs)  # mount points made; the process cannot write to the host's view
            try:
                wait_for(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=2).status == 200,
                    timeout=120,
                    what="the image's /healthz",
                )
                pid = op.image_pid()
                assert pid, op.log_tail()
                status = proc_status(pid)
                assert status["Uid"].split() == ["65532"] * 4 and status["Gid"].split() == ["65532"] * 4
                assert set(status["Groups"].split()) <= {"65532"}
                assert "ro" in root_mount_options(pid), "the image's root is writable"
                assert Path(f"/proc/{pid}/root/usr/share/teal/packages.txt").exists(), "not the image's root"

                Env(k8s, app_ns).two_releases(timeout=120)
                written = sorted(os.listdir(f"/proc/{pid}/root/tmp"))
                _say(f"the image ran as uid 65532 on a read-only root; it wrote in /tmp: {written or 'nothing'}")
            except BaseException:
                print(op.log_tail(120))
                raise
            finally:
                code = op.stop()
            log = op.log_tail(2000)
            assert not re.search(r"Read-only file system|PermissionError|Permission denied", log), log
            assert snapshot(rootfs) == before, "something was written outside /tmp"
            assert code is not None
    finally:
        for ns in (op_ns, app_ns):
            core.delete_namespace(ns)
