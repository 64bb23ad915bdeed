#!/usr/bin/env python3
"""Which of our functions and files a memory hit runs, from two callgrind outputs.

    hit_files.py ZERO.out HIT.out HITS

ZERO.out is `hit_instructions hit 0` under callgrind, HIT.out the same with HITS hits (see
`hit_files.sh`). Two views, per hit, of the instructions of this crate that run:

- by function: each function of ours that runs (its own instructions, with what the
  compiler inlined into it), grouped by the module that defines it. This is what "a hit
  crosses N files" counts: the hops a reader follows.
- by source line: each instruction by the file of the line it was compiled from, so a
  small function inlined into its caller still counts in its own file.
"""
import os
import re
import sys
from collections import defaultdict

CRATE = "tower_response_cache::"


def costs(path):
    """Instructions by (function name) and by (source file)."""
    by_fn = defaultdict(int)
    by_file = defaultdict(int)
    names = {}
    fl = fi = fn = None
    skip_next = False
    table_of = {"fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl",
                "fn": "fn", "cfn": "fn", "ob": "ob", "cob": "ob"}
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = raw.rstrip("\n")
        m = re.match(r"^(fl|fi|fe|fn|cfi|cfl|cfn|cob|ob)=\((\d+)\)(?: (.*))?$", line)
        if m:
            kind, ident, name = m.groups()
            table = names.setdefault(table_of[kind], {})
            if name is not None:
                table[ident] = name
            value = table.get(ident)
            if kind == "fl":
                fl = fi = value
            elif kind in ("fi", "fe"):
                fi = value
            elif kind == "fn":
                fn = value
                fi = fl
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        if line and (line[0].isdigit() or line[0] in "+-*"):
            if skip_next:
                skip_next = False
                continue
            parts = line.split()
            if len(parts) >= 2:
                n = int(parts[1])
                by_fn[fn] += n
                by_file[fi] += n
    return by_fn, by_file


def module_of(function):
    """`answer` for `tower_response_cache::answer::build`, `http::service` for
    `<tower_response_cache::http::service::CacheService<S> as ..>::call`; None if not ours."""
    if not function:
        return None
    name = function.lstrip("<")
    if not name.startswith(CRATE):
        return None
    segments = []
    rest = name[len(CRATE):]
    while True:
        m = re.match(r"([a-z_][a-z0-9_]*)(::)?", rest)
        if not m:
            break
        segments.append(m.group(1))
        rest = rest[m.end():]
        if not m.group(2):
            # A function's own name ends the path.
            segments.pop()
            break
    return "::".join(segments) or "(crate root)"


def file_of(path):
    """`answer.rs` for `<checkout>/src/answer.rs` (run from the checkout); None if not ours."""
    root = os.path.join(os.getcwd(), "src") + os.sep
    return path[len(root):] if path and path.startswith(root) else None


def per_hit(hit, zero, hits, key):
    out = defaultdict(float)
    for name, n in hit.items():
        k = key(name)
        if k:
            out[k] += (n - zero.get(name, 0)) / hits
    return out


def main():
    zero, hit, hits = sys.argv[1], sys.argv[2], int(sys.argv[3])
    z_fn, z_file = costs(zero)
    h_fn, h_file = costs(hit)
    functions = per_hit(h_fn, z_fn, hits, lambda f: f if module_of(f) else None)
    functions = {f: v for f, v in functions.items() if v >= 0.5}
    modules = defaultdict(float)
    counts = defaultdict(int)
    for f, v in functions.items():
        modules[module_of(f)] += v
        counts[module_of(f)] += 1
    print(f"## by function: {len(functions)} functions in {len(modules)} modules of src/")
    print("| instructions per hit | module | functions |")
    print("|---:|---|---:|")
    for m, v in sorted(modules.items(), key=lambda kv: -kv[1]):
        print(f"| {v:.0f} | `{m}` | {counts[m]} |")
    files = per_hit(h_file, z_file, hits, file_of)
    rows = sorted(((v, f) for f, v in files.items() if v >= 0.5), reverse=True)
    print(f"\n## by source line: {len(rows)} files of src/")
    print("| instructions per hit | file |")
    print("|---:|---|")
    for v, f in rows:
        print(f"| {v:.0f} | `{f}` |")
    total = (sum(h_fn.values()) - sum(z_fn.values())) / hits
    print(f"\ninstructions per hit (all code, the origin's included): {total:.0f}")
    if "-v" in sys.argv:
        for f, v in sorted(functions.items(), key=lambda kv: -kv[1]):
            print(f"{v:8.0f} {f[:160]}")


if __name__ == "__main__":
    main()
