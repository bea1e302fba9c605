#!/usr/bin/env python3
"""The house goals of issue 8, checked: no non-test source file over 500 lines, no
function over 70 lines, no import cycle between the server's top-level modules.

    python3 scripts/house.py          # exit 1 and a list when a goal is broken

Test code does not count: files named tests.rs or under a tests/ directory, and inline
`#[cfg(test)] mod ... { }` blocks. Functions are measured from their `fn` line to the
closing brace at the same indentation (rustfmt layout). Imports are every `crate::X`
path outside comments, folded to top-level modules of src/."""
import os
import re
import sys

ROOTS = ["src", "bench/src", "client/src"]
FILE_MAX, FN_MAX = 500, 70


def rust_files(root):
    for dp, _, fs in os.walk(root):
        for f in sorted(fs):
            p = os.path.join(dp, f)
            if f.endswith(".rs") and f != "tests.rs" and "/tests/" not in p + "/":
                yield p


def strip_tests(lines):
    """The lines outside inline test modules (kept in place as blanks)."""
    out, i = list(lines), 0
    while i < len(out):
        if out[i].strip() == "#[cfg(test)]" and i + 1 < len(out) and re.match(r"\s*(pub )?mod \w+ \{", out[i + 1]):
            ind = len(out[i + 1]) - len(out[i + 1].lstrip())
            j = i + 2
            while j < len(out) and not (out[j].startswith(" " * ind + "}") and out[j].strip() == "}"):
                j += 1
            for k in range(i, min(j + 1, len(out))):
                out[k] = ""
            i = j + 1
            continue
        i += 1
    return out


def long_functions(path, lines):
    fn = re.compile(r"^(\s*)(pub(\([^)]*\))? )?(async )?(const )?(unsafe )?fn (\w+)")
    for i, line in enumerate(lines):
        m = fn.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        ind = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j] == ind + "}":
                if j - i + 1 > FN_MAX:
                    yield f"{path}:{i + 1} fn {m.group(7)}: {j - i + 1} lines"
                break


def cycles(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    problems, edges = [], {}
    for root in ROOTS:
        for p in rust_files(root):
            lines = strip_tests(open(p).read().split("\n"))
            code = len(lines)
            while code and not lines[code - 1].strip():
                code -= 1
            if code > FILE_MAX:
                problems.append(f"{p}: {code} lines of non-test code")
            problems.extend(long_functions(p, lines))
            if root == "src":
                rel = os.path.relpath(p, "src")[:-3].split("/")
                src = rel[0] if rel[0] not in ("lib", "main") else "crate"
                for line in lines:
                    if line.strip().startswith("//"):
                        continue
                    for m in re.finditer(r"crate::(\w+)", line):
                        if m.group(1) != src:
                            edges.setdefault(src, set()).add(m.group(1))
    for c in cycles(edges):
        problems.append("import cycle: " + " <-> ".join(c))
    for p in problems:
        print(p)
    print(f"house: {len(problems)} problem(s) (files <= {FILE_MAX} lines, fns <= {FN_MAX}, no cycle)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
