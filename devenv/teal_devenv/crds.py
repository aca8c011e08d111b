"""Install CustomResourceDefinitions into a (local) cluster and wait until they are served."""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .wait import wait_for

REPO = Path(__file__).resolve().parents[2]  # devenv/teal_devenv/crds.py -> the repository


def teal_crd_files() -> list[Path]:
    """Teal's own CRDs: the copy in the operator's package (teal/crds, package data of
    teal-operator), else the repository's crds/."""
    shipped = Path(str(importlib.resources.files("teal") / "crds"))
    for folder in (shipped, REPO / "crds"):
        files = sorted(folder.glob("*.yaml"))
        if files:
            return files
    raise FileNotFoundError(f"no CRD files in {shipped} or {REPO / 'crds'}")


def crd_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    docs = []
    for path in paths:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    return docs


def install_crds(
    api_client: client.ApiClient, docs: list[dict[str, Any]], timeout: float = 60, replace: bool = True
) -> list[str]:
    """Create each CRD (or replace it with this version), then wait until all are Established."""
    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for doc in docs:
        name = doc["metadata"]["name"]
        names.append(name)
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as e:
            if e.status != 409:
                raise
            if replace:
                current = ext.read_custom_resource_definition(name)
                doc = dict(doc, metadata=dict(doc["metadata"], resourceVersion=current.metadata.resource_version))
                ext.replace_custom_resource_definition(name, doc)

    def established() -> bool:
        for n in names:
            crd = ext.read_custom_resource_definition(n)
            conds = {c.type: c.status for c in (crd.status.conditions or [])}
            if conds.get("Established") != "True":
                return False
        return True

    wait_for(established, timeout=timeout, what="CRDs Established")
    return names
