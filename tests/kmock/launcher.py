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

- applies label selectors (`labelSelector`: `k=v`, `k==v`, `k!=v`, `k`,
  `!k`, `k in (a,b)`, `k notin (a,b)`) and field selectors (`fieldSelector`:
  `path=v`, `path==v`, `path!=v` on any dotted field, e.g.
  `involvedObject.name`) to lists and watches, as an API server does — code
  that forgets to check what it listed is caught here;
- plays kubelet's exec (`pods/NAME/exec`, a websocket): the command runs
  for real, with `podman exec`, in the container a test named in the pod's
  annotation `devd.test/exec.<container>` (see `_serve_exec`);
- answers a log request for a container the pod does not have with 400
  and the API server's message ("container X is not valid for pod Y");
- plays the DefaultIngressClass admission plugin: an Ingress created
  without a class gets the IngressClass marked default, so a class-less
  Ingress read back means the cluster has no default class;
- plays admission on pod creation, refusing with 403 Forbidden and the API
  server's messages: Pod Security (the namespace's
  `pod-security.kubernetes.io/enforce` label, `baseline` or `restricted`,
  a subset of their checks: privileged, host namespaces, hostPath, added
  capabilities; and for restricted also runAsNonRoot, allowPrivilegeEscalation,
  capabilities.drop ALL, seccompProfile) and ResourceQuota (`spec.hard.pods`
  against the namespace's pods that are not Succeeded or Failed; a quota on
  `requests.*`/`limits.*` refuses containers that do not specify them). A test
  playing the Job or ReplicaSet controller turns the refusal into the
  FailedCreate event or ReplicaFailure condition a real controller writes.

- server-side apply keeps `metadata.managedFields` per field manager (the
  `fieldManager` query; fieldsV1 of every map key, lists and scalars as
  leaves): an apply removes the fields the same manager applied last time
  and no longer applies (a label or an annotation dropped from a manifest
  goes), as an API server does for fields one manager owns;
- a CustomResourceDefinition created or applied is served at once (its
  group, versions, plural, kind, scope) and reported `Established`, so its
  custom resources can be applied next;
- a delete collects the garbage: objects whose ownerReferences name the
  deleted one are deleted too, and theirs (a Deployment's ReplicaSets and
  their pods), unless `propagationPolicy` is `Orphan`.

It stays what kmock is otherwise: patches merge naively (lists replaced;
SSA does not merge lists by key, and fields other managers set are not
tracked), and no controller runs — the test sets Job and Deployment
statuses and creates pods itself.

Usage: launcher.py [--port N]; prints "listening on http://127.0.0.1:PORT"
on stdout once it accepts connections, and serves until SIGTERM/SIGINT.
"""

import argparse
import asyncio
import datetime
import fcntl
import itertools
import json
import os
import pty
import signal
import struct
import sys
import termios
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
        if request.subresource == "exec" and request.resource.plural == "pods":
            return await self._serve_exec(request)

        action = request.action
        data = request.data if isinstance(request.data, dict) else None
        content_type = {k.lower(): v for k, v in request.headers.items()}.get("content-type", "")
        # What a server-side apply asks for, before admission changes it:
        # a field admission sets is not the applier's.
        applied = (json.loads(json.dumps(data))
                   if data is not None and content_type.startswith("application/apply-patch")
                   else None)

        if (
            action == enums.action.CREATE
            and data is not None
            and request.resource.plural == "pods"
            and request.subresource is None
        ):
            refusal = self._admit_pod(request.namespace or data.get("metadata", {}).get("namespace"), data)
            if refusal is not None:
                return _status(403, "Forbidden", refusal)
        if (
            data is not None
            and request.resource.plural == "ingresses"
            and request.subresource is None
            and (action == enums.action.CREATE
                 or (action == enums.action.UPDATE and self._existing(_key(request)) is None))
        ):
            self._default_ingress_class(data)

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
                if applied is not None and request.subresource is None:
                    _apply_managed_fields(current, data, applied, request.params.get("fieldManager", ""))
                meta["resourceVersion"] = str(next(_versions))
                old_spec = current.get("spec")
                if request.subresource is None and "spec" in data and data["spec"] != old_spec:
                    merged = json.loads(json.dumps(old_spec or {}))
                    _merge(merged, data["spec"])
                    if merged != old_spec:
                        meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1

        if action == enums.action.CREATE and data is not None:
            meta = data.setdefault("metadata", {})
            if applied is not None:
                _apply_managed_fields({}, data, applied, request.params.get("fieldManager", ""))
            meta["resourceVersion"] = str(next(_versions))
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            meta.setdefault(
                "creationTimestamp",
                datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace

        if (
            data is not None
            and request.resource.plural == "customresourcedefinitions"
            and request.subresource is None
            and action in (enums.action.CREATE, enums.action.UPDATE)
        ):
            _register_crd(self, data)
            data["status"] = {
                "acceptedNames": (data.get("spec") or {}).get("names", {}),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
                ],
            }

        if action == enums.action.DELETE and request.name is not None and request.subresource is None:
            gone = self._existing(_key(request))
            uid = ((gone.raw.get("metadata") or {}).get("uid") if gone is not None else None)
            policy = (data or {}).get("propagationPolicy") or request.params.get("propagationPolicy")
            response = await super()._handle(request)
            if uid and policy != "Orphan" and response.status < 300:
                await self._collect_garbage({uid})
            return response

        return await super()._handle(request)

    async def _collect_garbage(self, uids):
        """Delete the objects owned by `uids`, then theirs (the garbage
        collector's background propagation)."""
        while uids:
            owned = []
            for (resource, ns, name), obj in list(self.objects.items()):
                if obj.deleted:
                    continue
                refs = (obj.raw.get("metadata") or {}).get("ownerReferences") or []
                if any(r.get("uid") in uids for r in refs):
                    owned.append((resource, ns, name, obj))
            uids = set()
            for resource, ns, name, obj in owned:
                uids.add((obj.raw.get("metadata") or {}).get("uid"))
                raw = obj.raw
                async with self._lock:
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
            uids.discard(None)

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

    async def _serve_list(self, request):
        payload = await super()._serve_list(request)
        match = _selector(request.params)
        payload["items"] = [o for o in payload["items"] if match(o)]
        return payload

    async def _serve_watch(self, request):
        match = _selector(request.params)
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and isinstance(event.get("object"), dict):
                if not match(event["object"]):
                    continue
            yield event

    def _objects_of(self, plural, namespace=None):
        for (resource, ns, _name), obj in list(self.objects.items()):
            if resource.plural == plural and (namespace is None or ns == namespace) and not obj.deleted:
                yield obj.raw

    def _default_ingress_class(self, ingress):
        """The DefaultIngressClass admission plugin: a new Ingress without
        `spec.ingressClassName` (or the legacy class annotation) gets the
        IngressClass marked default, the newest if several are."""
        spec = ingress.setdefault("spec", {})
        annotations = ingress.get("metadata", {}).get("annotations") or {}
        if spec.get("ingressClassName") or "kubernetes.io/ingress.class" in annotations:
            return
        defaults = [
            c for c in self._objects_of("ingressclasses")
            if (c.get("metadata", {}).get("annotations") or {}).get(
                "ingressclass.kubernetes.io/is-default-class") == "true"
        ]
        if defaults:
            newest = max(defaults, key=lambda c: int(c["metadata"].get("resourceVersion", "0")))
            spec["ingressClassName"] = newest["metadata"]["name"]

    def _admit_pod(self, namespace, pod):
        """Why admission refuses `pod` in `namespace`, or None."""
        name = pod.get("metadata", {}).get("name", "")
        ns_labels = {}
        for ns in self._objects_of("namespaces"):
            if ns.get("metadata", {}).get("name") == namespace:
                ns_labels = ns.get("metadata", {}).get("labels") or {}
        level = ns_labels.get("pod-security.kubernetes.io/enforce")
        if level in ("baseline", "restricted"):
            violations = _pod_security(pod.get("spec") or {}, level)
            if violations:
                return (f'pods "{name}" is forbidden: violates PodSecurity "{level}:latest": '
                        + ", ".join(violations))
        containers = ((pod.get("spec") or {}).get("initContainers") or []) + \
            ((pod.get("spec") or {}).get("containers") or [])
        for quota in self._objects_of("resourcequotas", namespace):
            qname = quota.get("metadata", {}).get("name", "")
            hard_all = (quota.get("spec") or {}).get("hard") or {}
            # A quota on compute resources makes them mandatory on every
            # container (the quota admission plugin's "must specify").
            missing = sorted(
                key for key in hard_all
                if key.split(".")[0] in ("requests", "limits")
                and any(
                    key.split(".", 1)[1] not in ((c.get("resources") or {}).get(key.split(".")[0]) or {})
                    for c in containers
                )
            )
            if missing:
                return f'pods "{name}" is forbidden: failed quota: {qname}: must specify {",".join(missing)}'
            hard = hard_all.get("pods")
            if hard is None:
                continue
            used = sum(
                1 for p in self._objects_of("pods", namespace)
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            )
            if used + 1 > int(hard):
                return (f'pods "{name}" is forbidden: exceeded quota: {qname}, requested: pods=1, '
                        f"used: pods={used}, limited: pods={hard}")
        return None

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
        spec = pod.get("spec") or {}
        names = [c.get("name") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]
        if container and names and container not in names:
            return _status(400, "BadRequest",
                           f"container {container} is not valid for pod {request.name}")
        annotations = pod.get("metadata", {}).get("annotations", {}) or {}
        text = annotations.get(f"devd.test/log.{container}", "")
        tail = request.params.get("tailLines")
        if tail:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail):])
        return aiohttp.web.Response(text=text, content_type="text/plain")


    async def _serve_exec(self, request):
        """The pod exec API as kubelet serves it behind the API server: a
        websocket (v5.channel.k8s.io, else v4) whose binary messages start
        with a channel byte (0 stdin, 1 stdout, 2 stderr, 3 the final
        Status, 4 a terminal resize, 255 a stream's close). The command
        runs for real in the container the pod's annotation
        `devd.test/exec.<container>` names ({"argv": [podman..., "exec"],
        "env": {...}, "target": name}), on a pseudo-terminal with tty=true."""
        raw = request._raw_request
        pod = self._existing(_key(request))
        if pod is None:
            return _status(404, "NotFound", f'pods "{request.name}" not found')
        query = raw.query
        spec = pod.get("spec") or {}
        names = [c.get("name") for c in spec.get("containers") or []]
        container = query.get("container") or (names[0] if len(names) == 1 else "")
        if container not in names:
            return _status(400, "BadRequest",
                           f"container {container} is not valid for pod {request.name}")
        annotations = pod.get("metadata", {}).get("annotations") or {}
        played = annotations.get(f"devd.test/exec.{container}")
        if played is None:
            return _status(500, "InternalError",
                           f"the played kubelet runs no container {container} for pod {request.name}")
        played = json.loads(played)
        command = query.getall("command", [])
        tty = query.get("tty") == "true"
        ws = aiohttp.web.WebSocketResponse(protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"))
        await ws.prepare(raw)
        argv = list(played["argv"]) + ["-i"] + (["-t"] if tty else []) + [played["target"]] + command
        env = dict(played.get("env") or {})
        master = None
        if tty:
            master, slave = pty.openpty()
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True,
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
            os.close(slave)
        else:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

        async def send(channel, data):
            if not ws.closed:
                await ws.send_bytes(bytes([channel]) + data)

        async def pump_out(read, channel):
            while True:
                try:
                    data = await read(65536)
                except OSError:  # a terminal whose last writer is gone: EIO
                    return
                if not data:
                    return
                await send(channel, data)

        async def read_master(n):
            return await asyncio.get_running_loop().run_in_executor(None, os.read, master, n)

        async def pump_in():
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    continue
                channel, body = msg.data[0], msg.data[1:]
                if channel == 0 and tty:
                    os.write(master, body)
                elif channel == 0 and proc.stdin is not None:
                    proc.stdin.write(body)
                    await proc.stdin.drain()
                elif channel == 255 and body[:1] == b"\x00" and not tty:
                    proc.stdin.close()
                elif channel == 4 and tty:
                    size = json.loads(body)
                    fcntl.ioctl(master, termios.TIOCSWINSZ,
                                struct.pack("HHHH", size["Height"], size["Width"], 0, 0))
            # The client went away: so does the command.
            if proc.returncode is None:
                proc.kill()

        inputs = asyncio.ensure_future(pump_in())
        if tty:
            outputs = [pump_out(read_master, 1)]
        else:
            outputs = [pump_out(proc.stdout.read, 1), pump_out(proc.stderr.read, 2)]
        outputs = [asyncio.ensure_future(o) for o in outputs]
        code = await proc.wait()
        # What the command wrote before it exited (a terminal may stay open
        # a moment longer in a process podman started).
        _, late = await asyncio.wait(outputs, timeout=2)
        for task in late:
            task.cancel()
        inputs.cancel()
        if master is not None:
            os.close(master)
        if code == 0:
            status = {"metadata": {}, "status": "Success"}
        else:
            status = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                      "message": f"command terminated with non-zero exit code: exit status {code}",
                      "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        await send(3, json.dumps(status).encode())
        await ws.close()
        return ws


def _status(code, reason, message):
    return aiohttp.web.json_response(
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "reason": reason, "code": code, "message": message},
        status=code,
    )


def _split_terms(text):
    """Split a selector at commas outside parentheses."""
    terms, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def _field(obj, path):
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _selector(params):
    """A predicate on objects for the request's labelSelector and fieldSelector."""
    checks = []
    for term in _split_terms(params.get("labelSelector", "")):
        words = term.split()
        if len(words) >= 3 and words[1] in ("in", "notin"):
            key, op = words[0], words[1]
            values = {v.strip() for v in term.split("(", 1)[1].rstrip(")").split(",")}

            def check(labels, key=key, op=op, values=values):
                return (labels.get(key) in values) == (op == "in") if key in labels else op == "notin"
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))

            def check(labels, key=key, value=value):
                return labels.get(key) != value
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))

            def check(labels, key=key, value=value):
                return labels.get(key) == value
        elif term.startswith("!"):
            def check(labels, key=term[1:].strip()):
                return key not in labels
        else:
            def check(labels, key=term):
                return key in labels
        checks.append(lambda o, c=check: c((o.get("metadata") or {}).get("labels") or {}))
    for term in _split_terms(params.get("fieldSelector", "")):
        negate = "!=" in term
        path, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))

        def fcheck(o, path=path, value=value, negate=negate):
            got = _field(o, path)
            got = "" if got is None else str(got)
            return (got != value) if negate else (got == value)
        checks.append(fcheck)
    return lambda o: all(c(o) for c in checks)


_BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                  "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def _pod_security(spec, level):
    """Pod Security Standards violations of a pod spec (a subset of the
    checks of k8s.io/pod-security-admission), in its message format."""
    out = []
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    psc = spec.get("securityContext") or {}

    def quoted(names):
        return ", ".join(f'"{n}"' for n in names)

    def plural(names):
        return "containers" if len(names) > 1 else "container"

    if any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")):
        out.append("host namespaces (hostNetwork=true)")
    priv = [c["name"] for c in containers if (c.get("securityContext") or {}).get("privileged")]
    if priv:
        out.append(f"privileged ({plural(priv)} {quoted(priv)} must not set securityContext.privileged=true)")
    host_path = [v["name"] for v in spec.get("volumes") or [] if "hostPath" in v]
    if host_path:
        out.append(f"hostPath volumes (volumes {quoted(host_path)})")
    added = [c["name"] for c in containers
             if set(((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []) - _BASELINE_CAPS]
    if added:
        out.append(f"non-default capabilities ({plural(added)} {quoted(added)} must not include capabilities beyond the default set)")
    if level != "restricted":
        return out
    esc = [c["name"] for c in containers
           if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False]
    if esc:
        out.append(f"allowPrivilegeEscalation != false ({plural(esc)} {quoted(esc)} must set securityContext.allowPrivilegeEscalation=false)")
    caps = [c["name"] for c in containers
            if "ALL" not in (((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") or [])]
    if caps:
        out.append(f'unrestricted capabilities ({plural(caps)} {quoted(caps)} must set securityContext.capabilities.drop=["ALL"])')

    root = [c["name"] for c in containers
            if (c.get("securityContext") or {}).get("runAsNonRoot", psc.get("runAsNonRoot")) is not True]
    if root:
        out.append(f"runAsNonRoot != true (pod or {plural(root)} {quoted(root)} must set securityContext.runAsNonRoot=true)")
    uid0 = [c["name"] for c in containers
            if (c.get("securityContext") or {}).get("runAsUser", psc.get("runAsUser")) == 0]
    if uid0:
        out.append(f"runAsUser=0 ({plural(uid0)} {quoted(uid0)} must not set runAsUser=0)")
    seccomp = [c["name"] for c in containers
               if (((c.get("securityContext") or {}).get("seccompProfile") or psc.get("seccompProfile") or {})
                   .get("type")) not in ("RuntimeDefault", "Localhost")]
    if seccomp:
        out.append(f'seccompProfile (pod or {plural(seccomp)} {quoted(seccomp)} must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
    return out


def _register_crd(emulator, doc):
    """Serve the custom resources of CustomResourceDefinition `doc`."""
    spec = doc.get("spec") or {}
    names = spec.get("names") or {}
    if not spec.get("group") or not names.get("plural") or not names.get("kind"):
        return
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        emulator.resources[(spec["group"], version["name"], names["plural"])] = {
            "kind": names["kind"],
            "singular": names.get("singular", names["kind"].lower()),
            "namespaced": spec.get("scope", "Namespaced") == "Namespaced",
            "verbs": ["create", "delete", "get", "list", "patch", "watch"],
            "shortnames": names.get("shortNames", []),
            "categories": names.get("categories", []),
            "subresources": sorted(version.get("subresources", {})),
        }


def _fields_v1(obj):
    """The fieldsV1 of a body: every map key (`f:key`), nested maps
    recursively; lists and scalars are leaves."""
    out = {}
    for k, v in obj.items():
        out[f"f:{k}"] = _fields_v1(v) if isinstance(v, dict) and v else {}
    return out


def _removals(old, new):
    """A patch of `None`s (kmock's removal) for the fields in fieldsV1
    `old` and not in `new`."""
    out = {}
    for k, sub in old.items():
        key = k[2:]
        if k not in new:
            out[key] = None
        elif sub and new[k]:
            nested = _removals(sub, new[k])
            if nested:
                out[key] = nested
    return out


def _apply_managed_fields(current, data, body, manager):
    """Server-side apply by `manager` of `body` (as sent, `data` after
    admission) onto `current`: remove what the manager applied before and
    no longer does (into `data`, as `None`s the patch removes), and record
    what it applies now."""
    applied = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "status")}
    meta = applied.get("metadata") or {}
    applied["metadata"] = {k: v for k, v in meta.items()
                           if k not in ("name", "namespace", "resourceVersion", "managedFields")}
    fields = _fields_v1(applied)
    entries = (current.get("metadata") or {}).get("managedFields") or []
    before = next((e.get("fieldsV1") or {} for e in entries
                   if e.get("manager") == manager and e.get("operation") == "Apply"), {})
    removals = _removals(before, fields)
    if removals:
        _merge_missing(data, removals)
    others = [e for e in entries if not (e.get("manager") == manager and e.get("operation") == "Apply")]
    data.setdefault("metadata", {})["managedFields"] = others + [{
        "manager": manager, "operation": "Apply", "apiVersion": data.get("apiVersion", ""),
        "fieldsType": "FieldsV1", "fieldsV1": fields,
    }]


def _merge_missing(into, removals):
    for k, v in removals.items():
        if v is None:
            into.setdefault(k, None)
        elif isinstance(into.get(k), dict):
            _merge_missing(into[k], v)
        elif k not in into:
            into[k] = v


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
            _register_crd(emulator, doc)


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
