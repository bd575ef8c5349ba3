#!/usr/bin/env python3
"""Checks the shape of the house, the way a reader would:

1. Crate edges point one way: protocol <- devd-sync <- {devd, devd-receiver};
   protocol does no I/O (no tokio, quinn, gix); devd builds without the
   receiver crate when its default features are off.
2. No module circles inside a crate: module A refers to module B
   (`crate::b::...` or `super::...` outside tests and comments) and B, through
   any chain, refers back to A. References between a module and its own
   ancestors (a parent re-exporting its children) are not circles.
3. Rooms a person can hold: no source file over 800 lines before its tests.

Prints what it finds; exits 1 if anything is wrong. Usage:
    scripts/architecture.py            # all three checks
    scripts/architecture.py --graph    # also print every module edge
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {
    "devd-protocol": "protocol/src",
    "devd-sync": "sync/src",
    "devd-receiver": "cluster-receiver/src",
    "devd": "laptop-daemon/src",
}
MAX_LINES = 800
# Crates a pure model must not reach (I/O, runtimes, sockets, git).
IMPURE = {"tokio", "quinn", "gix", "rustls", "notify", "kube"}


def module_of(src, path):
    """The module path of a source file: src/a/b.rs and src/a/b/mod.rs -> a::b."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ""
    return "::".join(rel)


def body_before_tests(text):
    """The source before the first `#[cfg(test)]`, without comments."""
    out = []
    for line in text.splitlines():
        if line.strip().startswith("#[cfg(test)]"):
            break
        code = line.split("//", 1)[0]
        out.append(code)
    return out


def references(module, lines, known):
    """Modules of this crate that `module` refers to."""
    refs = set()
    parent = module.split("::")[:-1]
    for line in lines:
        for m in re.finditer(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", line):
            refs.add(longest_known(m.group(1).split("::"), known))
        for m in re.finditer(r"\b((?:super::)+)((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)?", line):
            ups = m.group(1).count("super::")
            base = module.split("::")[: max(0, len(module.split("::")) - ups)] if module else []
            rest = (m.group(2) or "").split("::") if m.group(2) else []
            refs.add(longest_known(base + rest, known))
        # `use self::x` / `mod x` edges are parent -> child: ancestry, ignored.
    refs.discard(None)
    refs.discard(module)
    del parent
    return refs


def longest_known(parts, known):
    for n in range(len(parts), 0, -1):
        cand = "::".join(parts[:n])
        if cand in known:
            return cand
    return None


def related(a, b):
    """True if one module is an ancestor of the other (or the crate root)."""
    if a == "" or b == "":
        return True
    return a.startswith(b + "::") or b.startswith(a + "::")


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check_modules(show_graph):
    problems = []
    for crate, src in CRATES.items():
        src = os.path.join(ROOT, src)
        tests = test_only_files(src)
        files = {}
        for dirpath, _, names in os.walk(src):
            for n in names:
                p = os.path.join(dirpath, n)
                if n.endswith(".rs") and p not in tests:
                    files[module_of(src, p)] = p
        known = set(files)
        graph = {}
        for module, path in sorted(files.items()):
            lines = body_before_tests(open(path, encoding="utf-8").read())
            graph[module] = {r for r in references(module, lines, known) if not related(module, r)}
        if show_graph:
            for m in sorted(graph):
                for r in sorted(graph[m]):
                    print(f"  {crate}: {m or '(root)'} -> {r}")
        for comp in cycles(graph):
            edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
            problems.append(f"{crate}: module circle {{{', '.join(comp)}}}: " + "; ".join(edges))
    return problems


def test_only_files(src):
    """Files whose module is declared under `#[cfg(test)]` (`mod x;`): tests."""
    out = set()
    for dirpath, _, names in os.walk(src):
        for n in names:
            if not n.endswith(".rs"):
                continue
            p = os.path.join(dirpath, n)
            # Children of a.rs live in a/, children of a/mod.rs and lib.rs beside it.
            if n in ("mod.rs", "lib.rs", "main.rs"):
                child_dir = dirpath
            else:
                child_dir = os.path.join(dirpath, n[:-3])
            text = open(p, encoding="utf-8").read()
            for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))? )?mod ([a-z_0-9]+);", text):
                for cand in (os.path.join(child_dir, m.group(1) + ".rs"),
                             os.path.join(child_dir, m.group(1), "mod.rs")):
                    out.add(cand)
    return out


def check_sizes():
    problems = []
    for src in CRATES.values():
        tests = test_only_files(os.path.join(ROOT, src))
        for dirpath, _, names in os.walk(os.path.join(ROOT, src)):
            for n in names:
                if not n.endswith(".rs"):
                    continue
                p = os.path.join(dirpath, n)
                if p in tests:
                    continue
                count = 0
                for line in open(p, encoding="utf-8"):
                    if line.strip().startswith("#[cfg(test)]"):
                        break
                    count += 1
                if count > MAX_LINES:
                    problems.append(f"{os.path.relpath(p, ROOT)}: {count} lines before its tests (over {MAX_LINES})")
    return problems


def direct_deps(crate, *flags):
    """The crate's direct normal dependencies, as `cargo tree` resolves them."""
    out = subprocess.run(
        ["cargo", "tree", "-q", "-p", crate, "-e", "normal", "--depth", "1",
         "--prefix", "none", *flags],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}


def check_crates():
    problems = []
    allowed = {
        "devd-protocol": set(),
        "devd-sync": {"devd-protocol"},
        "devd-receiver": {"devd-protocol", "devd-sync"},
        "devd": {"devd-protocol", "devd-sync", "devd-receiver"},
    }
    for crate, ok in allowed.items():
        deps = direct_deps(crate)
        ours = {d for d in deps if d in allowed}
        if not ours <= ok:
            problems.append(f"{crate} depends on {sorted(ours - ok)}: edges must point protocol <- devd-sync <- {{devd, devd-receiver}}")
        if crate == "devd-protocol" and deps & IMPURE:
            problems.append(f"devd-protocol depends on {sorted(deps & IMPURE)}: the pure model does no I/O")
    if "devd-receiver" in direct_deps("devd", "--no-default-features"):
        problems.append("devd without default features still depends on devd-receiver: keep it behind the `embedded` feature")
    return problems


def main():
    show_graph = "--graph" in sys.argv
    problems = check_crates() + check_modules(show_graph) + check_sizes()
    if problems:
        print("Architecture check failed:")
        for p in problems:
            print(f"- {p}")
        return 1
    print("Architecture check: crate edges point one way, no module circles, no file over "
          f"{MAX_LINES} lines before its tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
