#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>: a few valid inputs per
target, so the fuzzer starts from the formats instead of from nothing.

The wire frames are the pinned encodings of protocol/src/snapshots (the
snapshot test keeps them current) plus a whole sync exchange encoded here
with postcard's rules (varint integers, length-prefixed strings and vectors,
enum variants by index, fixed arrays without a length). Run from anywhere;
needs `zstd` on PATH for the compressed blobs. Files are named by content,
so running it again changes nothing.
"""
import hashlib
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string(s):
    s = s.encode() if isinstance(s, str) else s
    return varint(len(s)) + s


def frame(body):
    return len(body).to_bytes(4, "big") + body


def zstd(data, patch_from=None):
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        src = os.path.join(t, "in")
        with open(src, "wb") as f:
            f.write(data)
        cmd = ["zstd", "-q", "-c", src]
        if patch_from is not None:
            ref = os.path.join(t, "ref")
            with open(ref, "wb") as f:
                f.write(patch_from)
            cmd += ["--patch-from=" + ref]
        return subprocess.run(cmd, check=True, capture_output=True).stdout


# ClientMsg variants: Hello 0, Changes 1, Commit 2, BlobChunk 3, Subscribe 4, Logs 5.
# Entry: File 0, Symlink 1, Deleted 2. Base: Commit 0, Uploaded 1.
# Encoding: Raw 0, Zstd 1, ZstdPatch 2 (BlobRef: Overlay 0, Base 1).
def hello(ws="alice", token="t0k"):
    return frame(b"\x00" + varint(1) + string(ws) + string(token))


def file_change(path, cid, exec_=False):
    return string(path) + b"\x01\x00" + cid + (b"\x01" if exec_ else b"\x00")


def symlink_change(path, target):
    return string(path) + b"\x01\x01" + string(target)


def deleted_change(path):
    return string(path) + b"\x01\x02"


def removed_change(path):
    return string(path) + b"\x00"


def changes(gen, chs, blobs=()):
    return frame(b"\x01" + varint(gen) + varint(len(chs)) + b"".join(chs)
                 + varint(len(blobs)) + b"".join(blobs))


def inline_blob(cid, data):
    return cid + b"\x00" + varint(len(data)) + string(data)


def commit(gen, parent, entries):
    p = b"\x00" if parent is None else b"\x01" + varint(parent)
    return frame(b"\x02" + varint(gen) + p + b"\x01" + bytes(32) + varint(entries))


def chunk(cid, enc, raw_len, data, total=None, offset=0):
    total = len(data) if total is None else total
    return frame(b"\x03" + cid + enc + varint(raw_len) + varint(total) + varint(offset)
                 + string(data))


def cid(n):
    return bytes([n]) * 32


def frames_and_session():
    snap = open(os.path.join(ROOT, "protocol/src/snapshots/devd_protocol__codec__tests__wire_frames.snap")).read()
    server = {"applied", "rejected", "event", "welcome", "need", "services", "log", "logend"}
    for name, hexed in re.findall(r"^(\w+): ([0-9a-f]+)$", snap, re.M):
        raw = bytes.fromhex(hexed)
        # frames: byte 0 picks the direction (odd: receiver to laptop) and
        # the chunk size.
        put("frames", bytes([0x41 if name in server else 0x40]) + raw)
        put("frames", bytes([0x03 if name in server else 0x02]) + raw)
    text = b"hello, receiver\n" * 8
    old = b"hello, laptop\n" * 8
    z = zstd(text)
    zp = zstd(text, patch_from=old)
    a = hello()
    sync1 = (changes(1, [file_change("src/a.txt", cid(1)), symlink_change("l", "src/a.txt"),
                         file_change("run.sh", cid(2), True)],
                     [inline_blob(cid(2), b"#!/bin/sh\n")])
             + commit(1, None, 3)
             + chunk(cid(1), b"\x00", 5, b"hel", total=5) + chunk(cid(1), b"\x00", 5, b"lo", total=5, offset=3))
    sync2 = (changes(2, [deleted_change("run.sh"), removed_change("l"), file_change("big.txt", cid(3))])
             + commit(2, 1, 3)
             + chunk(cid(3), b"\x01", len(text), z))
    sync3 = (changes(3, [file_change("big.txt", cid(4))]) + commit(3, 2, 3)
             + chunk(cid(4), b"\x02\x00" + cid(3), len(text), zp))
    put("session", a + sync1)
    put("session", a + sync1 + sync2 + sync3)
    put("session", a + frame(b"\x04"))
    put("session", a + frame(b"\x05" + string("web") + b"\x01\x01"))
    put("session", a + changes(1, [file_change("a", cid(1)), file_change("a/b", cid(2))]) + commit(1, None, 2))
    return text, old, z, zp


def blob(text, old, z, zp):
    def head(enc, ref_len, raw_len):
        return bytes([enc, ref_len]) + raw_len.to_bytes(2, "little")
    put("blob", head(0, 0, 5) + b"hello")
    put("blob", head(1, 0, len(text)) + z)
    put("blob", head(2 | 4, len(old), len(text)) + old + zp)
    put("blob", head(1 | 4, 0, 0) + zstd(b""))


def control():
    for line in ['{"cmd":"status"}', '{"cmd":"sync"}', '{"cmd":"stop"}',
                 '{"cmd":"logs","service":"web","build":true,"follow":false}',
                 '{"ok":true,"data":{"log":"built web\\n"},"error":null}',
                 '{"ok":false,"data":null,"error":"no service \\"x\\""}',
                 '{"ok":true,"data":{"end":true}}',
                 '{"ok":true,"data":{"generation":3,"files":[1,2.5,-7e3],"unicode":"\\u00e9"}}']:
        put("control", line + "\n")


def pairing():
    put("pairing", 'address = "203.0.113.7:7447"\nfingerprint = "%s"\nworkspace = "alice"\ntoken = "t0ken"\n' % ("ab" * 32))
    put("pairing", '[kubernetes]\nnamespace = "devd"\npairing_secret = "devd-pairing"\n\n[build]\nbackend = "kubernetes"\n')
    put("pairing", "address = 'a'\nfingerprint = '''f'''\nworkspace = \"\"\"w\"\"\"\ntoken = \"\\u00e9\"\n")


def catalog():
    put("catalog", open(os.path.join(ROOT, "examples/demo/devd.toml")).read())
    put("catalog", '''[services.web]
context = "services/web"
dockerfile = "docker/Dockerfile"
inputs = ["shared", "protos/web.proto"]
image = "registry.example:5000/team/web"
build_args = { MODE = "dev" }
port = 8080
env = { LOG = "debug" }
replicas = 2
expose = "external"

[[services.web.steps]]
name = "npm"
image = "node:22@sha256:0123456789abcdef0123456789abcdef"
command = ["npm", "ci"]
workdir = "app"

[services.api]
context = "."
deployment = "api"
container = "server"
port = 9000
''')


def dockerignore():
    put("dockerignore", "docs/guide.md\n# comment\n*.md\n/tmp\n!keep.md\nbuild/**/*.o\nnode_modules\n")
    put("dockerignore", "src/x.tmp\n*\n!src\nsrc/*.tmp\n./cache/../logs\n[a-z]?.c\n\\#literal\n")


def git_objects():
    def obj(kind, body):
        return bytes([kind]) + len(body).to_bytes(2, "little") + body

    def ref(k):
        return b"@obj" + bytes([k]) + b"@" * 15
    blob_ = obj(1, b"hello\n")
    link = obj(1, b"a.txt")
    sub = obj(0, b"100755 run.sh\0" + ref(0))
    top = obj(0, b"100644 a.txt\0" + ref(0) + b"40000 bin\0" + ref(2) + b"120000 l\0" + ref(1)
              + b"160000 sub\0" + bytes(20))
    put("git_objects", bytes([4]) + blob_ + link + sub + top)
    commit = obj(2, b"tree " + b"0" * 40 + b"\nauthor A <a@b> 0 +0000\ncommitter A <a@b> 0 +0000\n\nmsg\n")
    put("git_objects", bytes([5]) + blob_ + link + sub + top + commit)


def main():
    text, old, z, zp = frames_and_session()
    blob(text, old, z, zp)
    control()
    pairing()
    catalog()
    dockerignore()
    git_objects()


if __name__ == "__main__":
    sys.exit(main())
