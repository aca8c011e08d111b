#!/usr/bin/env python3
"""Teal's operator image, built without a container engine (run through hack/build-image.sh).

    Debian packages (exact versions: debian.<arch>.lock)  --dpkg-deb -x-->  layer 1  /usr, /lib, /etc ...
    PyPI wheels (exact versions + hashes: python.<arch>.lock) --pip-->      layer 2  /opt/teal (a venv)
    Teal's own wheel (built here from operator/)             --pip-->      layer 3  /opt/teal/.../teal

Same inputs, same digest: every input is pinned (Debian versions and .deb hashes, wheel hashes,
the tools that build), bytecode is compiled with `unchecked-hash` (no timestamps in .pyc) and
PYTHONHASHSEED=0, and hack/image/oci.py writes the layers and the archive byte for byte the same.
Each stage is cached under $TEAL_CACHE/image/ by a hash of its inputs, so a warm build with
unchanged inputs copies the cached archive, and a change to operator/ rebuilds layer 3 only.

`--relock` re-resolves both locks (current Debian and PyPI versions) and then builds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oci  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("TEAL_CACHE") or Path.home() / ".cache" / "teal") / "image"

# What the image runs on: Debian's python3.11 and its standard library. base-files gives
# /etc/os-release (scanners and `docker inspect` users read it); libstdc++6 is the C++ runtime
# that manylinux wheels (google-re2) expect from the system.
DEB_ROOTS = ["python3.11-minimal", "libpython3.11-stdlib", "base-files", "libstdc++6"]
# apt resolves these too, but nothing in the image needs them: dpkg/tar and their libraries (no
# maintainer script runs in an extracted rootfs; the image never installs anything), mawk (for
# base-files' scripts), and the libraries of stdlib modules Teal never imports (sqlite3, dbm,
# readline, curses, nis) -- those modules are removed with them (PRUNE), the ELF check proves it.
DEB_SKIP = {
    "dpkg",
    "tar",
    "libacl1",
    "libmd0",
    "libselinux1",
    "libpcre2-8-0",
    "libzstd1",
    "mawk",
    "libsqlite3-0",
    "libdb5.3",
    "libreadline8",
    "readline-common",
    "libncursesw6",
    "libtinfo6",
    "libnsl2",
    "libtirpc3",
    "libtirpc-common",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libkeyutils1",
    "libcom-err2",
}
_DYNLOAD = "usr/lib/python3.11/lib-dynload/"
PRUNE = [  # (folder, regex of names below it) removed from the Debian tree
    ("usr/share", r"(man|info|locale|lintian|doc-base|bug|bash-completion|zsh|menu)(/.*)?"),
    ("usr/share/doc", r"[^/]+/(?!copyright$).*"),  # keep only each package's copyright (licences)
    (_DYNLOAD, r"(_curses|_curses_panel|_dbm|_sqlite3|nis|readline)\.cpython-.*\.so"),
    (_DYNLOAD, r"(_test\w*|_ctypes_test|_xxtestfuzz|xxlimited\w*)\.cpython-.*\.so"),
    ("usr/lib/python3.11", r"(idlelib|lib2to3|pydoc_data|tkinter|turtledemo|ensurepip|test)(/.*)?"),
    ("etc", r"(cron\.daily|logrotate\.d|systemd|update-motd\.d)(/.*)?"),
]
# Parts of wheels Teal never runs, removed after pip installed them. kubernetes.aio is the client's
# asyncio twin (64 MB with bytecode, a third of the image): neither Teal nor kopf imports it
# (tests/test_image.py checks operator/ never does).
SITE_PRUNE = ["kubernetes/aio"]
PY_PLATFORM = {"amd64": "x86_64", "arm64": "aarch64"}
LOADER = {"amd64": "/lib64/ld-linux-x86-64.so.2", "arm64": "/lib/ld-linux-aarch64.so.1"}
UID = GID = 65532
VENV = "/opt/teal"
IMAGE_ENV = [  # operator/Dockerfile sets the same (tests/test_image.py compares them)
    f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
    "PYTHONFAULTHANDLER=1",
    "HOME=/tmp",
    "TMPDIR=/tmp",
]


class BuildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[build-image] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BuildError(f"{' '.join(str(c) for c in cmd[:6])} ... exited {proc.returncode}:\n{tail}")
    return proc


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def source_digest() -> str:
    """Everything Teal's wheel is made of: pyproject.toml, README.md (its long description), operator/."""
    rels = ["pyproject.toml", "README.md"] + ["operator/" + p for p in oci.tree_paths(REPO / "operator")]
    h = hashlib.sha256()
    for rel in sorted(r for r in rels if not SOURCE_SKIP.search(r) and not (REPO / r).is_dir()):
        h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes() + b"\0")
    return h.hexdigest()


# the build context of operator/Dockerfile (.dockerignore) less what never reaches the wheel
SOURCE_SKIP = re.compile(r"(^|/)(__pycache__|[^/]*\.egg-info)(/|$)|\.pyc$|^operator/Dockerfile$")


@dataclass
class Config:
    arch: str
    suite: str
    python: str  # Debian's python3 of that suite, e.g. 3.11
    epoch: int
    ref: str
    version: str
    pip: str
    setuptools: str

    @property
    def debian_lock(self) -> Path:
        return HERE / f"debian.{self.arch}.lock"

    @property
    def python_lock(self) -> Path:
        return HERE / f"python.{self.arch}.lock"

    @property
    def tools_lock(self) -> Path:
        return HERE / "tools.lock"

    def pip_platform_args(self) -> list[str]:
        # bookworm's glibc is 2.36: any manylinux wheel up to 2_36 runs; pip wants each tag named
        # (most specific first; manylinux2014 = 2_17, manylinux1 = 2_5)
        machine = PY_PLATFORM[self.arch]
        tags = [f"manylinux_2_{m}_{machine}" for m in range(36, 4, -1)]
        tags += [f"manylinux{t}_{machine}" for t in ("2014", "2010", "1")]
        return [
            "--only-binary=:all:",
            *(a for t in tags for a in ("--platform", t)),
            "--python-version",
            self.python,
            "--implementation",
            "cp",
            "--abi",
            "cp" + self.python.replace(".", ""),
        ]


def load_config() -> Config:
    env = dict(re.findall(r"^(IMAGE_\w+)=(\S*)", (REPO / "hack" / "versions.env").read_text(), re.M))
    missing = {
        "IMAGE_DEBIAN_SUITE",
        "IMAGE_PYTHON",
        "IMAGE_PIP_VERSION",
        "IMAGE_SETUPTOOLS_VERSION",
        "IMAGE_SOURCE_DATE_EPOCH",
        "IMAGE_REPOSITORY",
    } - env.keys()
    if missing:
        raise BuildError(f"hack/versions.env lacks {', '.join(sorted(missing))}")
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    if arch not in PY_PLATFORM:
        raise BuildError(f"unsupported architecture {arch} (amd64 and arm64 are)")
    if f"python{env['IMAGE_PYTHON']}-minimal" not in DEB_ROOTS:
        raise BuildError(f"IMAGE_PYTHON={env['IMAGE_PYTHON']} is not the Python of DEB_ROOTS in hack/image/build.py")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or env["IMAGE_SOURCE_DATE_EPOCH"])
    return Config(
        arch=arch,
        suite=env["IMAGE_DEBIAN_SUITE"],
        python=env["IMAGE_PYTHON"],
        epoch=epoch,
        ref=f"{env['IMAGE_REPOSITORY']}:{project['version']}",
        version=project["version"],
        pip=env["IMAGE_PIP_VERSION"],
        setuptools=env["IMAGE_SETUPTOOLS_VERSION"],
    )


def project_dependencies() -> list[str]:
    return sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])


# ---------------------------------------------------------------- locks


def lock_header(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^# ([\w-]+): (.*)$", path.read_text(), re.M)) if path.exists() else {}


def debian_lock_entries(cfg: Config) -> list[tuple[str, str, str]]:
    """(package, version, sha256) from the Debian lock; refuses a lock made for other roots."""
    want = digest(cfg.suite, *DEB_ROOTS)
    if lock_header(cfg.debian_lock).get("roots") != want:
        raise BuildError(
            f"{cfg.debian_lock.relative_to(REPO)} is missing or was made for other packages; run `hack/build-image.sh --relock`"
        )
    rows = [line.split() for line in cfg.debian_lock.read_text().splitlines() if line and not line.startswith("#")]
    return [(r[0], r[1], r[3]) for r in rows]


def check_python_lock(cfg: Config) -> None:
    if lock_header(cfg.python_lock).get("dependencies") != digest(cfg.python, *project_dependencies()):
        raise BuildError(
            f"{cfg.python_lock.relative_to(REPO)} does not match pyproject.toml's dependencies; "
            "run `hack/build-image.sh --relock`"
        )
    if lock_header(cfg.tools_lock).get("tools") != digest(cfg.pip, cfg.setuptools):
        raise BuildError(
            "hack/image/tools.lock does not match IMAGE_PIP_VERSION/IMAGE_SETUPTOOLS_VERSION; run `hack/build-image.sh --relock`"
        )


def mmdebstrap_debs(cfg: Config, include: list[str], work: Path) -> list[Path]:
    """Let mmdebstrap resolve `include` (and dependencies) with its own apt on Debian's mirrors for
    the suite (main, updates, security) and return the downloaded .deb files."""
    target = work / "mmdebstrap"
    try:
        # the extract variant runs nothing of the target, so any architecture resolves on any host
        run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=extract",
                f"--architectures={cfg.arch}",
                f"--include={','.join(include)}",
                "--skip=cleanup/apt/cache",
                cfg.suite,
                target,
            ]
        )
    except BuildError as exc:
        if "was not found" in str(exc) or "Unable to locate" in str(exc):
            raise BuildError(
                f"{exc}\nDebian no longer serves a locked package version (a point release or "
                "security update replaced it): run `hack/build-image.sh --relock`"
            ) from exc
        raise
    debs = sorted((target / "var/cache/apt/archives").glob("*.deb"))
    kept = work / "debs"
    kept.mkdir(exist_ok=True)
    out = [Path(shutil.move(d, kept / d.name)) for d in debs]
    shutil.rmtree(target)
    return out


def deb_fields(deb: Path) -> tuple[str, str, str]:
    name, version, arch = run(["dpkg-deb", "--show", "--showformat=${Package} ${Version} ${Architecture}", deb]).stdout.split()
    return name, version, arch


def relock(cfg: Config, tools: Path, work: Path) -> None:
    """Both locks for every architecture the image is built for (each build uses its host's): only
    resolution and downloads, nothing of the target runs, so an amd64 host locks arm64 too."""
    for arch in PY_PLATFORM:
        relock_arch(dataclasses.replace(cfg, arch=arch), tools, work / arch)


def relock_arch(cfg: Config, tools: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    log(f"resolving Debian {cfg.suite} packages for {', '.join(DEB_ROOTS)} ({cfg.arch})")
    rows = sorted(deb_fields(d) + (oci.file_sha256(d),) for d in mmdebstrap_debs(cfg, DEB_ROOTS, work))
    cfg.debian_lock.write_text(
        "# Debian packages of the operator image: written by `hack/build-image.sh --relock`.\n"
        f"# suite: {cfg.suite}\n# roots: {digest(cfg.suite, *DEB_ROOTS)}\n"
        "# package version architecture sha256 (DEB_SKIP in hack/image/build.py are resolved, not extracted)\n"
        + "".join(" ".join(r) + "\n" for r in rows)
    )
    log(f"resolving PyPI wheels for {cfg.python} / {cfg.arch}")
    report = work / "report.json"
    run(
        [
            tools / "bin/pip",
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--target",
            work / "unused",
            "--report",
            report,
            *cfg.pip_platform_args(),
            *project_dependencies(),
        ]
    )
    lines = []
    for item in json.loads(report.read_text())["install"]:
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{item['metadata']['name'].lower()}=={item['metadata']['version']} --hash=sha256:{sha}\n")
    cfg.python_lock.write_text(
        "# Teal's runtime dependencies in the operator image (pip --require-hashes format):\n"
        "# written by `hack/build-image.sh --relock` from pyproject.toml's dependencies.\n"
        f"# python: {cfg.python} {PY_PLATFORM[cfg.arch]}\n# dependencies: {digest(cfg.python, *project_dependencies())}\n"
        + "".join(sorted(lines))
    )
    log(
        f"wrote {cfg.debian_lock.relative_to(REPO)} ({len(rows)} packages), "
        f"{cfg.python_lock.relative_to(REPO)} ({len(lines)} wheels)"
    )


def relock_tools(cfg: Config, work: Path) -> None:
    """tools.lock: pip (runs inside the image's Python to install the wheels) and setuptools (builds
    Teal's wheel), with their hashes."""
    dl, boot = work / "tools", work / "boot-venv"  # the host's python3 may have no pip of its own
    run([sys.executable, "-m", "venv", boot])
    run(
        [
            boot / "bin/pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            dl,
            f"pip=={cfg.pip}",
            f"setuptools=={cfg.setuptools}",
        ]
    )
    lines = [
        f"{w.name.split('-')[0]}=={w.name.split('-')[1]} --hash=sha256:{oci.file_sha256(w)}\n" for w in sorted(dl.glob("*.whl"))
    ]
    cfg.tools_lock.write_text(
        "# pip and setuptools for hack/image/build.py (pip --require-hashes format)\n"
        f"# tools: {digest(cfg.pip, cfg.setuptools)}\n" + "".join(lines)
    )


# ---------------------------------------------------------------- downloads (content-addressed)


def fetch_debs(cfg: Config, work: Path) -> list[tuple[str, Path]]:
    """The locked .deb files, from the cache or Debian, each checked against its locked sha256."""
    store = CACHE / "downloads" / "debs"
    store.mkdir(parents=True, exist_ok=True)
    entries = debian_lock_entries(cfg)
    path = lambda name, ver: store / f"{name}_{ver.replace(':', '%3a')}_{cfg.arch}.deb"  # noqa: E731
    missing = [(n, v) for n, v, _ in entries if not path(n, v).exists()]
    if missing:
        log(f"downloading {len(missing)} Debian packages")
        for deb in mmdebstrap_debs(cfg, [f"{n}={v}" for n, v in missing], work):
            name, version, _ = deb_fields(deb)
            shutil.move(deb, path(name, version))
    out = []
    for name, version, sha in entries:
        p = path(name, version)
        if not p.exists() or oci.file_sha256(p) != sha:
            p.unlink(missing_ok=True)
            raise BuildError(f"{p.name}: missing or not the locked content (sha256 {sha}); run --relock if Debian changed it")
        out.append((name, p))
    return out


def tools_venv(cfg: Config) -> tuple[Path, Path]:
    """A host venv with the locked pip + setuptools, and the folder of their wheels."""
    wheels = CACHE / "downloads" / "tools"
    venv = CACHE / f"tools-{digest(cfg.tools_lock.read_text())}"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", venv])
        run([venv / "bin/pip", "download", "--quiet", "--no-deps", "--require-hashes", "-r", cfg.tools_lock, "-d", wheels])
        run(
            [
                venv / "bin/pip",
                "install",
                "--quiet",
                "--no-index",
                "--find-links",
                wheels,
                "--require-hashes",
                "-r",
                cfg.tools_lock,
            ]
        )
        (venv / ".complete").touch()
    return venv, wheels


def fetch_wheels(cfg: Config, tools: Path) -> Path:
    store = CACHE / "downloads" / f"wheels-{cfg.python}-{cfg.arch}"
    log("downloading the locked wheels (pip skips those it has)")
    run(
        [
            tools / "bin/pip",
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            *cfg.pip_platform_args(),
            "-r",
            cfg.python_lock,
            "-d",
            store,
        ]
    )
    return store


# ---------------------------------------------------------------- the rootfs, stage by stage


def chroot(rootfs: Path, *argv: str, user: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """Run a program of the image inside it, with the image's environment (root builds, the image's user
    smoke-tests). No /proc or /dev is mounted: nothing here needs them."""
    env = dict(e.split("=", 1) for e in IMAGE_ENV)
    env.update(PYTHONHASHSEED="0", HOME="/tmp")
    cmd = [shutil.which("chroot") or "/usr/sbin/chroot"]
    if user:
        cmd.append(f"--userspec={UID}:{GID}")
    cmd += [str(rootfs), *argv]
    return run(cmd, env=env) if check else subprocess.run(cmd, env=env, capture_output=True, text=True)


def compile_bytecode(rootfs: Path, *folders: str) -> None:
    """.pyc files that never look at their source's mtime (unchecked-hash): reproducible, and nothing
    is compiled at run time on the read-only root."""
    chroot(rootfs, f"/usr/bin/python{PY}", "-m", "compileall", "-q", "-j1", "--invalidation-mode", "unchecked-hash", *folders)


def check_elf(cfg: Config, rootfs: Path, paths: list[str]) -> None:
    """Every shared object and program resolves all its libraries inside the image."""
    broken = []
    for rel in paths:
        p = rootfs / rel
        if p.is_symlink() or not p.is_file():
            continue
        with open(p, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        out = chroot(rootfs, LOADER[cfg.arch], "--list", "/" + rel, check=False)
        missing = [line.split()[0] for line in out.stdout.splitlines() if "not found" in line]
        if missing:
            broken.append(f"/{rel}: {', '.join(missing)}")
    if broken:
        raise BuildError("libraries missing in the image (a DEB_SKIP package is needed?):\n" + "\n".join(broken))


def prune(rootfs: Path) -> None:
    for folder, pattern in PRUNE:
        base, rx = rootfs / folder, re.compile(pattern)
        if not base.exists():
            continue
        for rel in sorted(oci.tree_paths(base), reverse=True):  # children before their folders
            if rx.fullmatch(rel):
                p = base / rel
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def system_files(rootfs: Path, debs: list[tuple[str, Path]]) -> None:
    """What dpkg and adduser would have written, minus everything that changes between runs."""
    write(rootfs / "etc/passwd", f"root:x:0:0:root:/root:/usr/sbin/nologin\nteal:x:{UID}:{GID}::/nonexistent:/usr/sbin/nologin\n")
    write(rootfs / "etc/group", f"root:x:0:\nteal:x:{GID}:\n")
    write(rootfs / "etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
    # scanners (Trivy, Grype) read installed Debian packages from here, as in distroless images
    for name, deb in debs:
        control = run(["dpkg-deb", "--field", deb]).stdout
        write(rootfs / "var/lib/dpkg/status.d" / name, control.rstrip("\n") + "\nStatus: install ok installed\n")
    for folder in ("tmp", "var/tmp"):
        (rootfs / folder).mkdir(parents=True, exist_ok=True)
        (rootfs / folder).chmod(0o1777)
    for d in ("root", "run"):
        (rootfs / d).mkdir(mode=0o700 if d == "root" else 0o755, exist_ok=True)


def clean_tmp(rootfs: Path) -> None:
    for folder in ("tmp", "var/tmp"):
        for p in (rootfs / folder).iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


@dataclass
class Stage:
    dir: Path

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def layer(self) -> tuple[Path, dict]:
        return self.dir / "layer.tar.gz", json.loads((self.dir / "layer.json").read_text())


def stage(name: str, key: str, build, epoch: int) -> tuple[Stage, bool]:
    """A cached stage: build(tmp_dir) fills tmp_dir/rootfs and returns the layer's paths; the layer
    is written and the folder renamed into place only when complete."""
    final = CACHE / f"{name}-{key}"
    if (final / "layer.json").exists():
        os.utime(final)
        return Stage(final), True
    tmp = CACHE / f"tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        paths = build(tmp)
        info = oci.write_layer(tmp / "rootfs", paths, tmp / "layer.tar.gz", epoch)
        (tmp / "layer.json").write_text(json.dumps(info, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Stage(final), False


def copy_rootfs(src: Stage, dst: Path) -> list[str]:
    run(["cp", "-a", src.rootfs, dst / "rootfs"])
    return oci.tree_paths(dst / "rootfs")


def new_paths(rootfs: Path, before: list[str]) -> list[str]:
    """What a stage added: its layer. Stages here only add files (pip installs into a new venv,
    compileall writes new __pycache__ folders), so no layer needs whiteouts."""
    old = set(before)
    return [p for p in oci.tree_paths(rootfs) if p not in old]


def build_base(cfg: Config, work: Path) -> tuple[Stage, bool]:
    def build(tmp: Path) -> list[str]:
        rootfs = tmp / "rootfs"
        rootfs.mkdir()
        debs = [(n, d) for n, d in fetch_debs(cfg, work) if n not in DEB_SKIP]
        log(f"extracting {len(debs)} Debian packages")
        for _, deb in debs:
            run(["dpkg-deb", "--extract", deb, rootfs])
        prune(rootfs)
        system_files(rootfs, debs)
        log("compiling the standard library")
        compile_bytecode(rootfs, f"/usr/lib/python{PY}")
        paths = oci.tree_paths(rootfs)
        check_elf(cfg, rootfs, paths)
        return paths

    return stage("base", digest(cfg.debian_lock.read_text(), CODE, str(cfg.epoch), *sorted(DEB_SKIP)), build, cfg.epoch)


def build_deps(cfg: Config, base: Stage, tools: Path, tool_wheels: Path) -> tuple[Stage, bool]:
    def build(tmp: Path) -> list[str]:
        before = copy_rootfs(base, tmp)
        rootfs = tmp / "rootfs"
        wheels = fetch_wheels(cfg, tools)
        shutil.copytree(wheels, rootfs / "tmp/wheels")
        shutil.copy(cfg.python_lock, rootfs / "tmp/requirements.lock")
        pip_whl = next(tool_wheels.glob(f"pip-{cfg.pip}-*.whl"))
        shutil.copy(pip_whl, rootfs / "tmp" / pip_whl.name)
        log(f"installing {len(list(wheels.glob('*.whl')))} wheels into {VENV}")
        chroot(rootfs, f"/usr/bin/python{PY}", "-m", "venv", "--without-pip", VENV)
        chroot(
            rootfs,
            f"{VENV}/bin/python",
            f"/tmp/{pip_whl.name}/pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--require-hashes",
            "--find-links",
            "/tmp/wheels",
            "-r",
            "/tmp/requirements.lock",
        )
        for rel in SITE_PRUNE:
            shutil.rmtree(rootfs / VENV.lstrip("/") / f"lib/python{PY}/site-packages" / rel)
        for script in (rootfs / VENV.lstrip("/") / "bin").glob("[Aa]ctivate*"):
            script.unlink()  # shell helpers, and no shell in the image
        clean_tmp(rootfs)
        log("compiling the dependencies")
        compile_bytecode(rootfs, f"{VENV}/lib")
        paths = new_paths(rootfs, before)
        check_elf(cfg, rootfs, paths)
        return paths

    return stage("deps", digest(base.dir.name, cfg.python_lock.read_text(), cfg.tools_lock.read_text(), CODE), build, cfg.epoch)


def build_wheel(cfg: Config, tools: Path, out: Path) -> Path:
    """Teal's wheel from a clean copy of the sources (no stale build/ or egg-info), timestamps from
    SOURCE_DATE_EPOCH, by the locked setuptools."""
    src = out / "src"
    src.mkdir()
    for rel in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / rel, src / rel)
    shutil.copytree(
        REPO / "operator",
        src / "operator",
        ignore=lambda d, names: [n for n in names if SOURCE_SKIP.search(os.path.relpath(os.path.join(d, n), REPO))],
    )
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(cfg.epoch), PYTHONHASHSEED="0")
    name = (
        run(
            [
                tools / "bin/python",
                "-c",
                "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))",
                out / "wheels",
            ],
            cwd=src,
            env=env,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return out / "wheels" / name


def image_config(cfg: Config, stages: list[str]) -> dict:
    created = dt.datetime.fromtimestamp(cfg.epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "architecture": cfg.arch,
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{UID}:{GID}",
            "Entrypoint": ["teal"],
            "Cmd": ["run"],
            "WorkingDir": "/tmp",
            "Env": IMAGE_ENV,
            "ExposedPorts": {"8080/tcp": {}, "9090/tcp": {}},  # liveness (/healthz), metrics
            "Labels": {
                "org.opencontainers.image.title": "teal",
                "org.opencontainers.image.description": "Teal: blue/green releases with Prometheus analysis and automatic revert",
                "org.opencontainers.image.source": "https://github.com/teal-dev/teal",
                "org.opencontainers.image.licenses": "Apache-2.0",
                "org.opencontainers.image.version": cfg.version,
                "org.opencontainers.image.created": created,
                "org.opencontainers.image.base.name": f"debian:{cfg.suite} (packages: /usr/share/teal/packages.txt)",
            },
        },
        "history": [{"created": created, "created_by": f"hack/build-image.sh: {s}"} for s in stages],
    }


def build_image(cfg: Config, deps: Stage, tools: Path, work: Path, base: Stage) -> Path:
    out = CACHE / f"image-{image_key(cfg, deps)}.oci.tar"

    def build(tmp: Path) -> list[str]:
        before = copy_rootfs(deps, tmp)
        rootfs = tmp / "rootfs"
        wheel = build_wheel(cfg, tools, work)
        (rootfs / "tmp/wheels").mkdir()
        shutil.copy(wheel, rootfs / "tmp/wheels" / wheel.name)
        pip_whl = next((CACHE / "downloads" / "tools").glob(f"pip-{cfg.pip}-*.whl"))
        shutil.copy(pip_whl, rootfs / "tmp" / pip_whl.name)
        chroot(
            rootfs,
            f"{VENV}/bin/python",
            f"/tmp/{pip_whl.name}/pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--find-links",
            "/tmp/wheels",
            f"teal-operator=={cfg.version}",
        )
        clean_tmp(rootfs)
        site = f"{VENV}/lib/python{PY}/site-packages"
        compile_bytecode(rootfs, f"{site}/teal")
        write(
            rootfs / "usr/share/teal/packages.txt",
            f"# {cfg.ref}: what is inside\n# Debian {cfg.suite} ({cfg.arch}), extracted:\n"
            + "".join(f"{n} {v}\n" for n, v, _ in debian_lock_entries(cfg) if n not in DEB_SKIP)
            + "# Python wheels ("
            + VENV
            + ")\n"
            + "".join(
                line.split(" ")[0] + "\n"
                for line in cfg.python_lock.read_text().splitlines()
                if line and not line.startswith("#")
            )
            + f"teal-operator=={cfg.version}\n",
        )
        smoke = chroot(rootfs, "teal", "--help", user=True).stdout
        chroot(rootfs, "python", "-c", "import teal.controller, teal.cli, teal.main", user=True)
        if "run" not in smoke:
            raise BuildError(f"`teal --help` in the image printed no `run` command:\n{smoke}")
        return new_paths(rootfs, before)

    if out.exists():
        os.utime(out)
        return out
    top, _ = stage("teal", image_key(cfg, deps), build, cfg.epoch)
    layers = [base.layer, deps.layer, top.layer]
    config = image_config(
        cfg,
        [
            f"Debian {cfg.suite} packages ({cfg.debian_lock.name})",
            f"{VENV}: Python wheels ({cfg.python_lock.name})",
            f"teal-operator {cfg.version} (operator/)",
        ],
    )
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    oci.write_archive(tmp, config, layers, cfg.ref, cfg.epoch)
    tmp.rename(out)
    shutil.rmtree(top.dir)  # the archive holds it; the stage folder has served
    return out


def image_key(cfg: Config, deps: Stage) -> str:
    return digest(deps.dir.name, CODE, cfg.ref, str(cfg.epoch), source_digest())


def prune_cache(keep: int = 2) -> None:
    """Keep the most recently used `keep` entries of each kind (each stage is 100-200 MB); remove what
    killed builds left (this build holds the cache's lock, so no other one is running)."""
    for left in [*CACHE.glob("tmp-*"), *CACHE.glob("work-*"), *CACHE.glob("teal-*"), *CACHE.glob("image-*.tmp*")]:
        shutil.rmtree(left) if left.is_dir() else left.unlink()
    for kind in ("base-", "deps-", "image-", "tools-"):
        entries = sorted(CACHE.glob(kind + "*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            shutil.rmtree(old) if old.is_dir() else old.unlink()


# ---------------------------------------------------------------- main

CODE = digest(*(p.read_text() for p in sorted(HERE.glob("*.py"))), (REPO / "hack/build-image.sh").read_text())
PY = "3.11"


def main(argv: list[str] | None = None) -> int:
    global PY
    ap = argparse.ArgumentParser(prog="hack/build-image.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--output",
        default=str(REPO / "dist" / "teal-image.oci.tar"),
        help="where the archive goes (its summary goes beside it as <name>.json)",
    )
    ap.add_argument("--relock", action="store_true", help="re-resolve the Debian and PyPI locks, then build")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise BuildError("the build extracts Debian packages and runs the image's Python with chroot: run it as root")
    start = time.monotonic()
    os.umask(0o022)  # modes in the image must not depend on the caller's umask (pip, mkdir, dpkg-deb)
    cfg = load_config()
    PY = cfg.python
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"work-{os.getpid()}"
    work.mkdir()
    try:
        if args.relock:
            relock_tools(cfg, work)
        tools, tool_wheels = tools_venv(cfg)
        if args.relock:
            relock(cfg, tools, work)
        check_python_lock(cfg)
        base, base_hit = build_base(cfg, work)
        deps, deps_hit = build_deps(cfg, base, tools, tool_wheels)
        cached = CACHE / f"image-{image_key(cfg, deps)}.oci.tar"
        image_hit = cached.exists()
        archive = build_image(cfg, deps, tools, work, base)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.output).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(archive, out.with_suffix(".tmp"))
    out.with_suffix(".tmp").rename(out)
    summary = oci.read_archive(out)
    layers = summary["manifest"]["layers"]
    info = {
        "ref": cfg.ref,
        "digest": summary["manifest_digest"],
        "config_digest": summary["manifest"]["config"]["digest"],
        "archive": str(out),
        "archive_size": out.stat().st_size,
        "compressed_size": sum(x["size"] for x in layers),
        "uncompressed_size": sum(summary["uncompressed_sizes"]),
        "seconds": round(time.monotonic() - start, 1),
        "cache": {"base": base_hit, "deps": deps_hit, "image": image_hit},
    }
    meta = out.with_name(out.name.split(".")[0] + ".json")
    meta.write_text(json.dumps(info, indent=1) + "\n")
    prune_cache()
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    log(f"{cfg.ref} {info['digest']}")
    log(f"{out}: {len(layers)} layers, {mb(info['compressed_size'])} compressed, {mb(info['uncompressed_size'])} uncompressed")
    hits = ", ".join(k for k, v in info["cache"].items() if v) or "none"
    log(f"built in {info['seconds']}s; cached stages used: {hits}")
    if not all(info["cache"].values()):
        with open(CACHE.parent / "build-times.log", "a") as f:
            f.write(f"[build-image] {info['seconds']}s, cache hits {info['cache']} ({dt.date.today()})\n")
    print(info["digest"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as exc:
        log(f"ERROR: {exc}")
        sys.exit(1)
