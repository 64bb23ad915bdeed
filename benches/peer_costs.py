#!/usr/bin/env python3
"""What one in-process hit of each peer-bench layer costs beyond its instructions.

    peer_costs.py DIR

DIR holds callgrind outputs `{variant}.{iters}.out` of the peer bench (see `peer_costs.sh`),
taken with --cache-sim=yes --branch-sim=yes --dump-instr=yes for the variants `none`
(`direct` alone), `arc` and `ours`, at 2 000 and 6 000 iterations. Per call, for each
layer minus the direct call: instructions, atomic (lock-prefixed) instructions, simulated
the 64-byte lines of the layer's own code run on every call (what it asks of the
instruction cache), simulated L1 instruction and data misses, mispredicted branches, and
callgrind's cycle estimate,
each as the overhead over the direct call (as `peer_instructions.sh` computes it)
(Ir + 10 x (L1 misses + mispredictions) + 100 x last-level misses).
"""
import collections
import re
import subprocess
import sys

# Each extra iteration is 7.25 calls (see peer_instructions.sh); 4 000 extra iterations.
CALLS = 4000 * 29 / 4
EVENTS = "Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim".split()


def parse(path):
    """Costs by (object, instruction address, function)."""
    costs = collections.defaultdict(lambda: [0] * len(EVENTS))
    # Callgrind names objects and functions once, by number, then by the number alone;
    # `ob=`/`fn=` set the current one, `cob=`/`cfn=` only name a call's target.
    names = {"ob": {}, "fn": {}}
    current = {"ob": None, "fn": None}
    last, npos, skip = 0, 1, False
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        if line.startswith("positions:"):
            npos = len(line.split()) - 1
            continue
        m = re.match(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            called, kind, number, name = m.groups()
            if name:
                names[kind][number] = name
            if not called:
                current[kind] = names[kind][number]
            continue
        if line.startswith("calls="):
            skip = True  # the next line is the call's inclusive cost
            continue
        if not line[0] in "0123456789+-*":
            continue
        parts = line.split()
        a = parts[0]
        if a == "*":
            addr = last
        elif a[0] in "+-":
            step = int(a[1:], 0)
            addr = last + step if a[0] == "+" else last - step
        else:
            addr = int(a, 0)
        last = addr
        if skip:
            skip = False
            continue
        row = costs[(current["ob"], addr, current["fn"])]
        for i, v in enumerate(parts[npos:]):
            row[i] += int(v)
    return costs


def atomic_addresses(obj, cache={}):
    if obj not in cache:
        out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                             capture_output=True, text=True).stdout
        cache[obj] = {int(m.group(1), 16) for m in
                      re.finditer(r"^\s*([0-9a-f]+):\s+lock ", out, re.M)}
    return cache[obj]


def crate_of(fn):
    if fn and "tower_response_cache::" in fn:
        return "ours"
    if fn and ("axum_response_cache::" in fn or "lru::" in fn):
        return "arc"
    return None


def totals(path):
    sums, atomics = [0] * len(EVENTS), 0
    for (obj, addr, _), row in (costs := parse(path)).items():
        sums = [s + v for s, v in zip(sums, row)]
        if obj and addr in atomic_addresses(obj):
            atomics += row[0]
    return sums, atomics, costs


def per_call(d, variant):
    a, atom_a, costs_a = totals(f"{d}/{variant}.2000.out")
    b, atom_b, costs_b = totals(f"{d}/{variant}.6000.out")
    ev = {e: (y - x) / CALLS for e, x, y in zip(EVENTS, a, b)}
    ev["atomics"] = (atom_b - atom_a) / CALLS
    # The 64-byte lines of the layer's own code that run on every call: what it asks of
    # the instruction cache.
    lines = set()
    for key, row in costs_b.items():
        ran = (row[0] - costs_a.get(key, [0])[0]) / CALLS
        if ran >= 0.5 and crate_of(key[2]) == variant:
            lines.add((key[0], key[1] >> 6))
    ev["lines"] = len(lines)
    return ev


def main():
    d = sys.argv[1]
    base = per_call(d, "none")
    print("| layer, overhead over direct | instructions | atomic | own code lines run | "
          "L1i misses | L1d misses | mispredicted | estimated cycles |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in ("arc", "ours"):
        ev = per_call(d, variant)
        # The pass of a layer runs `direct` too: its own cost is the difference, and its
        # overhead what it costs beyond the direct call of the handler it wraps.
        own = {k: ev[k] - 2 * base[k] for k in ev if k != "lines"}
        l1i = own["I1mr"]
        l1d = own["D1mr"] + own["D1mw"]
        mis = own["Bcm"] + own["Bim"]
        ll = own["ILmr"] + own["DLmr"] + own["DLmw"]
        est = own["Ir"] + 10 * (l1i + l1d + mis) + 100 * ll
        print(f"| {variant} | {own['Ir']:.0f} | {own['atomics']:.1f} | {ev['lines']} | {l1i:.1f} | "
              f"{l1d:.1f} | {mis:.1f} | {est:.0f} |")


if __name__ == "__main__":
    main()
