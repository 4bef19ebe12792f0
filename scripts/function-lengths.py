#!/usr/bin/env python3
"""Lists the longest functions of C/CUDA sources: `scripts/function-lengths.py [N] [paths...]`.

A function is a top-level `{ ... }` block whose opening line (or the lines just
before it) ends a parameter list `)`. Comments and string literals are blanked
first, so braces inside them do not count. Length = lines from the signature's
first line to the closing brace. Default: the 10 longest under src/.
"""
import os
import re
import sys


def blank(text):
    """Comments, strings and char literals replaced by spaces (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * (min(j, n) - i - 1) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    lines = blank(open(path, encoding="utf-8", errors="replace").read()).split("\n")
    depth, start, found = 0, None, []
    for no, line in enumerate(lines):
        for ch in line:
            if ch == "{":
                if depth == 0:
                    head = " ".join(l.strip() for l in lines[max(0, no - 3):no + 1])
                    head = head[: head.rfind("{")].strip()
                    if head.endswith(")") and not re.search(r"=\s*$", head):
                        # the signature starts at the last line above that is blank or ends a statement
                        s = no
                        while s > 0 and lines[s - 1].strip() and not lines[s - 1].rstrip().endswith((";", "}", "{")) \
                                and not lines[s - 1].lstrip().startswith("#"):
                            s -= 1
                        m = re.search(r"([A-Za-z_]\w*)\s*\([^()]*(\([^()]*\)[^()]*)*\)\s*$", head)
                        start = (s, m.group(1) if m else "?")
                    else:
                        start = None
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0 and start:
                    found.append((no - start[0] + 1, path, start[0] + 1, start[1]))
                    start = None
    return found


def main():
    args = sys.argv[1:]
    top = int(args.pop(0)) if args and args[0].isdigit() else 10
    roots = args or ["src"]
    rows = []
    for root in roots:
        for d, _, files in os.walk(root) if os.path.isdir(root) else [("", None, [root])]:
            for f in files:
                if f.endswith((".c", ".h", ".cu")):
                    rows += functions(os.path.join(d, f))
    for length, path, line, name in sorted(rows, reverse=True)[:top]:
        print(f"{length:5d}  {path}:{line}  {name}")


if __name__ == "__main__":
    main()
