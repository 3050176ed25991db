#!/usr/bin/env python3
"""Lists import circles between the gateway's modules (one module a file).

Reads every `crate::…`, `super::…` and child-module path in host/src and
prints each strongly connected group of modules that import one another,
leaving out groups wholly inside plugins/ (the generated bindings and the
code around them name each other by design). Exits 1 when a circle remains.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "host" / "src"


def module_of(path):
    """The module path of a file: host/src/relay/mod.rs -> ('relay',)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def strip_tests_and_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    cut = text.find("#[cfg(test)]\nmod tests")
    return text if cut < 0 else text[:cut]


def use_paths(text):
    """Every path a file names: `use` trees expanded, and inline paths."""
    paths = []
    for tree in re.findall(r"\buse\s+([^;]+);", text):
        paths.extend(expand(re.sub(r"\s+", "", tree)))
    paths.extend(re.findall(r"\b(?:crate|super)(?:::\w+)+", text))
    return paths


def expand(tree):
    """Expands `a::{b, c::d}` into `a::b`, `a::c::d`."""
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    return [p for item in items if item for p in expand(prefix + item)]


def resolve(path, here, children, modules):
    """The module file a path lands in, or None for another crate."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        depth = 0
        while segs and segs[0] == "super":
            depth, segs = depth + 1, segs[1:]
        if segs and segs[0] == "self":
            segs = segs[1:]
        base = list(here)[: len(here) - depth]
    elif segs[0] in children:
        base = list(here)
    else:
        return None
    best = None
    for n in range(len(segs) + 1):
        candidate = tuple(base + segs[:n])
        if candidate in modules:
            best = candidate
    return best


def main():
    files = sorted(ROOT.rglob("*.rs"))
    modules = {module_of(f): f for f in files}
    graph = {m: set() for m in modules}
    for module, f in modules.items():
        text = strip_tests_and_comments(f.read_text())
        children = set(re.findall(r"\bmod\s+(\w+)\s*;", text))
        for path in use_paths(text):
            target = resolve(path, module, children, modules)
            if target is not None and target != module and target != ():
                graph[module].add(target)
    graph.pop((), None)
    for edges in graph.values():
        edges.discard(())
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    circles = [c for c in circles if not all(m[0] == "plugins" for m in c)]
    for c in circles:
        print("import circle: " + ", ".join("::".join(m) for m in sorted(c)))
    print(f"{len(graph)} modules, {len(circles)} import circles outside plugins/")
    return 1 if circles else 0


def strongly_connected(graph):
    """Tarjan's algorithm, iterative."""
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    group.add(m)
                    if m == node:
                        break
                result.append(group)
    return result


if __name__ == "__main__":
    sys.exit(main())
