#!/usr/bin/env python3
"""A Kubernetes API emulator for devd's end-to-end tests.

kmock (PyPI) has an in-memory, stateful Kubernetes API (KubernetesEmulator)
but no server command; this is one. On top of kmock it does what the tests
need an API server to do:

- stamps metadata.resourceVersion (and uid, creationTimestamp) on every
  write, as kube-rs' watcher and clients expect;
- server-side apply (PATCH, application/apply-patch+yaml) of an object that
  does not exist creates it — kmock's PATCH only updates;
- keeps metadata.generation: 1 at creation, +1 when a write changes spec
  (Deployment rollouts compare status.observedGeneration with it);
- answers 404 and 409 with the reasons NotFound and AlreadyExists, as an
  API server does (kmock names them differently);
- serves GET .../pods/NAME/log?container=C from the pod's annotation
  "devd.test/log.C", since the test plays kubelet and there is no container
  to read a log from.
- serves Namespaces, a cluster-scoped resource kmock's path parser reads
  as a namespace prefix: /api/v1/namespaces and /api/v1/namespaces/NAME
  (and its status and finalize subresources) are the Namespace objects.
- serves devd's own custom resources as an install does (`kubectl apply -k
  manifests/` applies the CRDs): every CustomResourceDefinition in
  manifests/crd/ is registered (group, versions, plural, kind, scope), so
  e.g. DevBuilds can be listed before the first one exists.

It stays what kmock is otherwise: lists ignore label selectors, patches
merge naively (lists replaced), and no controller runs — the test sets Job
and Deployment statuses and creates pods itself.

Usage: launcher.py [--port N]; prints "listening on http://127.0.0.1:PORT"
on stdout once it accepts connections, and serves until SIGTERM/SIGINT.
"""

import argparse
import asyncio
import datetime
import itertools
import json
import signal
import sys
import uuid

import aiohttp.web
import attrs
import kmock
from kmock._internal import enums, parsing

_versions = itertools.count(1)

_parse_path = parsing.parse_path


def _parse_path_with_namespaces(path):
    # Core v1 namespaces are cluster-scoped objects, not a prefix, when the
    # path ends at the namespace's name (or one of its own subresources).
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "api" and parts[2] == "namespaces" and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
    ):
        return parsing.ParsedPath(
            group="",
            version=parts[1],
            plural="namespaces",
            namespace=None,
            name=parts[3] if len(parts) >= 4 else None,
            subresource=parts[4] if len(parts) == 5 else None,
        )
    return _parse_path(path)


parsing.parse_path = _parse_path_with_namespaces


def _key(request):
    return (request.resource, request.namespace, request.name)


class Emulator(kmock.KubernetesEmulator):
    def _existing(self, key):
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    async def _handle(self, request):
        if request.resource is None:
            return await super()._handle(request)

        if (
            request.method == enums.method.GET
            and request.subresource == "log"
            and request.resource.plural == "pods"
        ):
            return self._serve_log(request)

        action = request.action
        data = request.data if isinstance(request.data, dict) else None
        content_type = {k.lower(): v for k, v in request.headers.items()}.get("content-type", "")

        if action == enums.action.UPDATE and data is not None:
            existing = self._existing(_key(request))
            if existing is None and content_type.startswith("application/apply-patch"):
                # Server-side apply creates what does not exist yet.
                original = request
                request = attrs.evolve(
                    request, action=enums.action.CREATE, method=enums.method.POST
                )
                # kmock routes requests it has recorded (by identity).
                for i, seen in enumerate(self._requests):
                    if seen is original:
                        self._requests[i] = request
                action = enums.action.CREATE
            elif existing is not None:
                current = existing.raw
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = str(next(_versions))
                old_spec = current.get("spec")
                if request.subresource is None and "spec" in data and data["spec"] != old_spec:
                    merged = json.loads(json.dumps(old_spec or {}))
                    _merge(merged, data["spec"])
                    if merged != old_spec:
                        meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1

        if action == enums.action.CREATE and data is not None:
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(_versions))
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            meta.setdefault(
                "creationTimestamp",
                datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace

        return await super()._handle(request)

    async def _render_error(self, exc):
        # A real API server's reasons, which clients match on (kube-rs'
        # get_opt treats only reason "NotFound" as absent).
        if isinstance(exc, kmock.KubernetesError) and exc.status in (404, 409):
            return aiohttp.web.json_response(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "reason": "NotFound" if exc.status == 404 else "AlreadyExists",
                 "code": exc.status, "message": exc.message or exc.reason or ""},
                status=exc.status,
            )
        return await super()._render_error(exc)

    def _serve_log(self, request):
        pod = self._existing(_key(request))
        if pod is None:
            return aiohttp.web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                 "reason": "NotFound", "code": 404,
                 "message": f'pods "{request.name}" not found'},
                status=404,
            )
        container = request.params.get("container", "")
        annotations = pod.get("metadata", {}).get("annotations", {}) or {}
        text = annotations.get(f"devd.test/log.{container}", "")
        tail = request.params.get("tailLines")
        if tail:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail):])
        return aiohttp.web.Response(text=text, content_type="text/plain")


def _register_crds(emulator):
    import pathlib

    try:
        import yaml  # PyYAML, which kubernetes-validate brings too
    except ImportError:
        sys.exit("launcher.py reads manifests/crd/ with PyYAML: pip install pyyaml "
                 "(or kubernetes-validate, as scripts/test.sh does)")

    crds = pathlib.Path(__file__).resolve().parents[2] / "manifests" / "crd"
    for path in sorted(crds.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec, names = doc["spec"], doc["spec"]["names"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                emulator.resources[(spec["group"], version["name"], names["plural"])] = {
                    "kind": names["kind"],
                    "singular": names.get("singular", names["kind"].lower()),
                    "namespaced": spec["scope"] == "Namespaced",
                    "verbs": ["create", "delete", "get", "list", "patch", "watch"],
                    "shortnames": names.get("shortNames", []),
                    "categories": names.get("categories", []),
                    "subresources": sorted(version.get("subresources", {})),
                }


def _merge(into, changes):
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    emulator = Emulator()
    emulator.resources.load_bundled()
    _register_crds(emulator)
    async with emulator, kmock.Server(emulator, port=args.port or None) as server:
        print(f"listening on http://{server.host}:{server.port}", flush=True)
        await stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
