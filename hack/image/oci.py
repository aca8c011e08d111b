"""Deterministic layer tarballs and an OCI image archive, written without a container engine.

Same tree + same epoch -> same bytes -> same digests: entries are sorted, every mtime is the
epoch, owners are numeric (0 in practice), no atime/ctime/user names, and gzip carries no
file name or time. The archive is the layout `docker save` (Docker >= 25) writes: an OCI image
layout (oci-layout, index.json, blobs/sha256/...) plus a Docker manifest.json pointing at the
same blobs, so `docker load` (old and new), containerd's import (`kind load image-archive`)
and go-containerregistry's tarball reader (`crane push`) all accept it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_paths(root: Path) -> list[str]:
    """Every path under root (relative, '/'-separated, no leading './'), without root itself."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            out.append(name if rel == "." else f"{rel}/{name}")
    return out


def with_parents(paths: Iterable[str]) -> list[str]:
    """The paths plus all their parent folders, sorted bytewise (a stable, total order)."""
    full = set()
    for p in paths:
        full.add(p)
        parts = p.split("/")
        for i in range(1, len(parts)):
            full.add("/".join(parts[:i]))
    return sorted(full, key=lambda s: s.encode())


def _tarinfo(root: Path, rel: str, epoch: int, hardlinks: dict[tuple[int, int], str]) -> tuple[tarfile.TarInfo, Path | None]:
    path = root / rel
    st = os.lstat(path)
    ti = tarfile.TarInfo(rel + ("/" if stat.S_ISDIR(st.st_mode) else ""))
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid, ti.uname, ti.gname = st.st_uid, st.st_gid, "", ""
    ti.mtime = epoch
    if stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
        return ti, None
    if stat.S_ISLNK(st.st_mode):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
        return ti, None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{rel}: only folders, files and symlinks belong in an image layer")
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in hardlinks:
        ti.type, ti.linkname = tarfile.LNKTYPE, hardlinks[key]
        return ti, None
    hardlinks[key] = rel
    ti.type, ti.size = tarfile.REGTYPE, st.st_size
    return ti, path


def write_layer(root: Path, paths: Iterable[str], out: Path, epoch: int) -> dict[str, Any]:
    """A gzipped layer of `paths` (with their parent folders) taken from `root`.

    Returns digest (of the .tar.gz), diff_id (of the plain tar) and both sizes."""
    diff = hashlib.sha256()
    plain_size = 0

    class _Tee(io.RawIOBase):  # hash and count the plain tar stream on its way into gzip
        def __init__(self, gz: gzip.GzipFile):
            self.gz = gz

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # type: ignore[override]
            nonlocal plain_size
            diff.update(b)
            plain_size += len(b)
            return self.gz.write(b)

    hardlinks: dict[tuple[int, int], str] = {}
    with (
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=_Tee(gz), mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel in with_parents(paths):
            ti, src = _tarinfo(root, rel, epoch, hardlinks)
            if src is None:
                tar.addfile(ti)
            else:
                with open(src, "rb") as f:
                    tar.addfile(ti, f)
    return {
        "digest": "sha256:" + file_sha256(out),
        "diff_id": "sha256:" + diff.hexdigest(),
        "size": out.stat().st_size,
        "uncompressed_size": plain_size,
    }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), epoch, 0o644, "", ""
    tar.addfile(ti, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, epoch: int) -> None:
    ti = tarfile.TarInfo(name + "/")
    ti.type, ti.mtime, ti.mode, ti.uname, ti.gname = tarfile.DIRTYPE, epoch, 0o755, "", ""
    tar.addfile(ti)


def write_archive(
    out: Path, config: dict[str, Any], layers: list[tuple[Path, dict[str, Any]]], ref: str, epoch: int
) -> dict[str, Any]:
    """The image archive: config + layers (gzipped files with their write_layer() info).

    `ref` is the full name the loaders tag it with (registry/repo:tag)."""
    config = dict(config, rootfs={"type": "layers", "diff_ids": [info["diff_id"] for _, info in layers]})
    config_bytes = canonical_json(config)
    config_desc = {"mediaType": MT_CONFIG, "digest": "sha256:" + sha256_hex(config_bytes), "size": len(config_bytes)}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config_desc,
        "layers": [{"mediaType": MT_LAYER, "digest": info["digest"], "size": info["size"]} for _, info in layers],
    }
    manifest_bytes = canonical_json(manifest)
    manifest_digest = "sha256:" + sha256_hex(manifest_bytes)
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            {
                "mediaType": MT_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": config["architecture"], "os": config["os"]},
                # containerd (kind load) names the image after the first, OCI tools after the second
                "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    blob = lambda digest: "blobs/sha256/" + digest.split(":", 1)[1]  # noqa: E731
    docker_manifest = [
        {"Config": blob(config_desc["digest"]), "RepoTags": [ref], "Layers": [blob(info["digest"]) for _, info in layers]}
    ]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_dir(tar, "blobs", epoch)
        _add_dir(tar, "blobs/sha256", epoch)
        seen = set()
        for path, info in layers:
            if info["digest"] in seen:  # two identical layers: one blob
                continue
            seen.add(info["digest"])
            ti = tarfile.TarInfo(blob(info["digest"]))
            ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = info["size"], epoch, 0o644, "", ""
            with open(path, "rb") as f:
                tar.addfile(ti, f)
        _add_bytes(tar, blob(config_desc["digest"]), config_bytes, epoch)
        _add_bytes(tar, blob(manifest_digest), manifest_bytes, epoch)
        _add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}), epoch)
        _add_bytes(tar, "index.json", canonical_json(index), epoch)
        _add_bytes(tar, "manifest.json", canonical_json(docker_manifest), epoch)
    return {
        "digest": manifest_digest,
        "config_digest": config_desc["digest"],
        "ref": ref,
        "archive_sha256": file_sha256(out),
        "archive_size": out.stat().st_size,
        "compressed_size": sum(info["size"] for _, info in layers),
        "uncompressed_size": sum(info["uncompressed_size"] for _, info in layers),
        "layers": [info for _, info in layers],
    }


def read_archive(path: Path) -> dict[str, Any]:
    """Open an image archive and check every reference in it; raises ValueError on the first
    inconsistency. Returns index, manifest, config, docker manifest and the layer blob names."""
    with tarfile.open(path) as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}

        def read(name: str) -> bytes:
            if name not in members:
                raise ValueError(f"{path.name}: {name} is missing")
            return tar.extractfile(members[name]).read()  # type: ignore[union-attr]

        def blob(desc: dict[str, Any]) -> bytes:
            algo, hexdigest = desc["digest"].split(":", 1)
            data = read(f"blobs/{algo}/{hexdigest}")
            if algo != "sha256" or sha256_hex(data) != hexdigest or len(data) != desc["size"]:
                raise ValueError(f"blob {desc['digest']}: content does not match its digest or size")
            return data

        if json.loads(read("oci-layout")).get("imageLayoutVersion") != "1.0.0":
            raise ValueError("oci-layout: imageLayoutVersion is not 1.0.0")
        index = json.loads(read("index.json"))
        if len(index.get("manifests", [])) != 1:
            raise ValueError("index.json: expected exactly one manifest")
        desc = index["manifests"][0]
        manifest = json.loads(blob(desc))
        config = json.loads(blob(manifest["config"]))
        diff_ids, sizes = [], []
        for layer in manifest["layers"]:
            plain = gzip.decompress(blob(layer))
            diff_ids.append("sha256:" + sha256_hex(plain))
            sizes.append(len(plain))
        if diff_ids != config["rootfs"]["diff_ids"]:
            raise ValueError("config rootfs.diff_ids do not match the uncompressed layers")
        docker = json.loads(read("manifest.json"))
        names = lambda d: "blobs/" + d["digest"].replace(":", "/")  # noqa: E731
        if docker[0]["Config"] != names(manifest["config"]) or docker[0]["Layers"] != [names(x) for x in manifest["layers"]]:
            raise ValueError("manifest.json (docker load) does not name the OCI manifest's blobs")
        return {
            "index": index,
            "manifest": manifest,
            "manifest_digest": desc["digest"],
            "config": config,
            "docker_manifest": docker,
            "layer_blobs": [names(x) for x in manifest["layers"]],
            "uncompressed_sizes": sizes,
        }
