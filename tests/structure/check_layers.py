#!/usr/bin/env python3
"""Checks every #include in server/ against the layer table.

The table (build/gqa_layers.json) is written by server/CMakeLists.txt from the same calls that
create the libraries: folder -> the layers it links. A file in server/<folder>/ may include its
own folder and any layer its folder reaches through that table; files directly in server/ are
the folder ".". An include of any other server folder is an upward (or sideways) include and
fails this check, as it fails to compile (each library exports only its own folders). A header
named *_internal.h is for its own folder alone.

The table itself must keep the invariants the layering is for (INVARIANTS below), so that an
upward include cannot be made to pass by adding the edge to CMake.

Usage: check_layers.py --table build/gqa_layers.json --server server
Exit status 0 when every include is allowed, 1 otherwise (each offence on one line).
"""
import argparse
import json
import pathlib
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
SOURCES = {".h", ".cc", ".cu", ".cuh", ".hpp", ".cpp"}
# (layer, layer it must never reach): the engine reports through a plain observer interface and
# never sees metrics; what the server runs never links the offline importers.
INVARIANTS = [
    ("engine", "metrics"),
    ("engine", "service"),
    ("metrics", "service"),
    ("model", "tokenizer"),
    ("backend", "engine"),
    (".", "convert"),
]


def reach(table):
    """folder -> every layer below it (transitive); exits on a cycle or an unknown layer."""
    below = {}

    def visit(folder, path):
        if folder in path:
            sys.exit("layer cycle: " + " -> ".join(path + [folder]))
        if folder not in table:
            sys.exit(f"layer table: {path[-1]} links unknown layer {folder}")
        if folder not in below:
            out = set()
            for dep in table[folder]:
                out.add(dep)
                out |= visit(dep, path + [folder])
            below[folder] = out
        return below[folder]

    for folder in table:
        visit(folder, [])
    return below


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", required=True, type=pathlib.Path)
    ap.add_argument("--server", required=True, type=pathlib.Path)
    args = ap.parse_args()
    table = json.loads(args.table.read_text())
    below = reach(table)
    errors = []
    for folder, never in INVARIANTS:
        if folder in below and never in below[folder]:
            errors.append(f"layer table: {folder} reaches {never} (server/CMakeLists.txt)")

    server = args.server.resolve()
    folders = {p.name for p in server.iterdir() if p.is_dir()}
    root_files = {p.name for p in server.iterdir() if p.is_file()}
    for name in sorted(folders - set(table)):
        errors.append(f"server/{name}/: a folder missing from the layer table "
                      "(add it with gqa_layer() in server/CMakeLists.txt)")
    checked = 0
    for path in sorted(server.rglob("*")):
        if path.suffix not in SOURCES or not path.is_file():
            continue
        rel = path.relative_to(server)
        folder = rel.parts[0] if len(rel.parts) > 1 else "."
        allowed = {folder} | below.get(folder, set())
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            target = m.group(1)
            parts = target.split("/")
            if len(parts) > 1 and parts[0] in folders:
                layer = parts[0]
            elif len(parts) == 1 and target in root_files:
                layer = "."
            else:
                continue  # not a server header (absl/, gqa/kernels/, a generated .pb.h, ...)
            checked += 1
            if layer != folder and parts[-1].endswith("_internal.h"):
                errors.append(f"server/{rel}:{lineno}: {target} is internal to {layer}/")
            elif layer not in allowed:
                errors.append(f"server/{rel}:{lineno}: upward include of {target}: layer "
                              f"{folder} may include only {sorted(allowed)}")
    for e in errors:
        print(e)
    if errors:
        print(f"{len(errors)} layer violation(s)")
        return 1
    print(f"layers: {checked} includes in server/ follow the layer table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
