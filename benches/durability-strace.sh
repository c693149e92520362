#!/usr/bin/env bash
# durability-strace.sh -- what a ferry binary does to make a local repository durable, seen
# through strace: `init` then `backup` of a small tree into a fresh local repository, with every
# fsync, fdatasync, rename and link traced (with the paths of their file descriptors). Run it
# with two binaries to compare (e.g. a build before and after a change):
#
#   benches/durability-strace.sh BIN [BIN...]
#
# Per binary and command: the counts of each traced call, the number of objects the command
# added to the repository, and how many of them followed the durable protocol of storage/local.rs:
#   the temporary file (or the unnamed one, linked through /proc/self/fd) was fsynced before it
#   was renamed or linked to the object's name, and the
#   object's directory was fsynced after that (a folder made on demand also has its parent
#   fsynced: counted as "new dirs synced").
# Environment: WORK (default /tmp/ferry-durability), FILES (small files in the tree, default
# 3000), MIB (MiB of incompressible data beside them, default 96: a few packs).
# Needs strace and python3. Not a timing benchmark: strace slows every call it traces.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,18p' "$0" >&2; exit 2; }
command -v strace >/dev/null || { echo "durability-strace: needs strace" >&2; exit 1; }
WORK=${WORK:-/tmp/ferry-durability}
FILES=${FILES:-3000}
MIB=${MIB:-96}
export FERRY_PASSWORD=durability-bench XDG_CACHE_HOME=$WORK/cache

rm -rf "$WORK"; mkdir -p "$WORK/src/small"
python3 - "$WORK/src/small" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, "f%05d.txt" % i), "w") as f:
        f.write(("line %d of file %d\n" % (i * 7, i)) * (1 + i % 50))
PY
head -c $((MIB << 20)) /dev/urandom > "$WORK/src/media.bin"

analyze() { # LOG REPO LABEL BEFORE: checks the objects and folders not listed in file BEFORE
  python3 - "$@" <<'PY'
import collections, os, re, sys
log, repo, label, before = sys.argv[1:5]
old = set(open(before).read().split("\n"))
repo = os.path.abspath(repo)
calls = collections.Counter()
events = []          # (seq, name, args, ok) in completion order
pending = {}
line_re = re.compile(r'^(\d+)\s+(.*)$')
for raw in open(log):
    m = line_re.match(raw.rstrip("\n"))
    if not m:
        continue
    pid, rest = m.groups()
    if rest.endswith("<unfinished ...>"):
        pending[pid] = rest[: -len("<unfinished ...>")]
        continue
    r = re.match(r'<\.\.\. (\w+) resumed>(.*)$', rest)
    if r:
        rest = pending.pop(pid, r.group(1) + "(") + r.group(2)
    c = re.match(r'(\w+)\((.*)\)\s+=\s+(-?\d+)', rest)
    if not c:
        continue
    name, args, ret = c.group(1), c.group(2), int(c.group(3))
    calls[name] += 1
    events.append((len(events), name, args, ret == 0))

def fd_path(args):
    m = re.match(r'\d+<(.*?)>', args)
    return m.group(1) if m else None
def strings(args):
    return re.findall(r'"((?:[^"\\]|\\.)*)"', args)

synced = collections.defaultdict(list)        # path -> seqs of successful fsync/fdatasync
for seq, name, args, ok in events:
    if ok and name in ("fsync", "fdatasync"):
        p = fd_path(args)
        if p:
            synced[p].append(seq)
            # A file without a name (O_TMPFILE) is published by a link through /proc/self/fd/N:
            # its fsync counts for that path.
            if "(deleted)" in args:
                synced["/proc/self/fd/" + args.split("<", 1)[0]].append(seq)
objects = [os.path.join(dp, f) for dp, _, fs in os.walk(repo) for f in fs]
objects = [o for o in objects if o not in old]
ok_objects, bad = 0, []
published = {}
for seq, name, args, ok in events:
    if ok and name in ("rename", "renameat", "renameat2", "link", "linkat"):
        s = strings(args)
        if len(s) >= 2:
            published[s[-1]] = (seq, s[-2])
for obj in objects:
    if obj not in published:
        bad.append((obj, "never renamed or linked into place"))
        continue
    seq, tmp = published[obj]
    if not any(x < seq for x in synced.get(tmp, [])):
        bad.append((obj, "temporary file not fsynced before publishing"))
    elif not any(x > seq for x in synced.get(os.path.dirname(obj), [])):
        bad.append((obj, "directory not fsynced after publishing"))
    else:
        ok_objects += 1
dirs = [os.path.join(dp, d) for dp, ds, _ in os.walk(repo) for d in ds] + [repo]
dirs = [d for d in dirs if d not in old]
new_dirs_synced = sum(1 for d in dirs if synced.get(os.path.dirname(d)))
counts = " ".join("%s=%d" % (k, calls[k]) for k in ("fsync", "fdatasync", "rename", "renameat", "renameat2", "link", "linkat"))
print("%s: %s | new objects=%d durable=%d/%d | new dirs=%d with parent synced=%d"
      % (label, counts, len(objects), ok_objects, len(objects), len(dirs), new_dirs_synced))
for obj, why in bad[:5]:
    print("   not durable: %s: %s" % (os.path.relpath(obj, repo), why))
PY
}

for bin in "$@"; do
  rm -rf "$WORK/repo" "$WORK/cache"
  : > "$WORK/before"
  for step in init backup; do
    args=(init --repo "$WORK/repo")
    [ $step = backup ] && args=(backup --repo "$WORK/repo" --host bench "$WORK/src")
    strace -f -qq -y -e trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat \
      -o "$WORK/$step.strace" "$bin" "${args[@]}" >/dev/null
    analyze "$WORK/$step.strace" "$WORK/repo" "$bin $step" "$WORK/before"
    find "$WORK/repo" > "$WORK/before"
  done
done
