"""Install CustomResourceDefinitions into a (local) cluster and wait until they are served."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .wait import wait_for

REPO = Path(__file__).resolve().parents[3]


def teal_crd_files() -> list[Path]:
    """Teal's own CRDs: the package's copy, else the repository's crds/."""
    here = Path(__file__).resolve().parent.parent
    for folder in (here / "crds", REPO / "crds"):
        files = sorted(folder.glob("*.yaml"))
        if files:
            return files
    raise FileNotFoundError("no CRD files in teal/crds or crds/")


def crd_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    docs = []
    for path in paths:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    return docs


def install_crds(api_client: client.ApiClient, docs: list[dict[str, Any]], timeout: float = 60,
                 replace: bool = True) -> list[str]:
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
