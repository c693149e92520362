#!/usr/bin/env bash
# servers.sh -- real object-storage servers on loopback for Ferry's tests: moto (S3) and
# Azurite (Azure Blob), plus the s3s-fs
# binary (a disk-backed S3 server) for tests that start, kill and restart their own server.
#
#   tests/servers.sh install   idempotent install: moto[server] in a venv, Azurite via npm,
#                              s3s-fs with cargo install (the binary path goes in the env file),
#                              kube-apiserver + etcd built from Go sources (tests/kube/build.sh;
#                              started per test by tests/kube/start.sh, not by this script)
#   tests/servers.sh start     start both on 127.0.0.1 at free ports, create bucket/container
#                              "ferry-test", write $FERRY_SERVERS_DIR/run/env (source it)
#   tests/servers.sh stop      kill what start started (recorded PIDs), remove the env file
#   tests/servers.sh status    show what runs; exit 0 only if both servers answer
#   tests/servers.sh check     smoke test: put/get/list on moto, put/get blob on Azurite
#
#   FERRY_SERVERS_DIR  where everything lives (default /var/cache/ferry-servers)
#   FERRY_SERVERS_WAIT seconds to wait for a server to answer (default 60)
#
# All traffic goes to 127.0.0.1 only: curl runs with --noproxy '*', Python uses http.client
# (no proxy support), Azurite runs with --disableTelemetry (mandatory: it phones home otherwise).
set -euo pipefail

MOTO_VERSION=5.2.5
AZURITE_VERSION=3.35.0
# 0.16+ needs rustc 1.96; this one builds with the rustup toolchain (a test server, not a
# dependency of Ferry, so the 1.85 rule does not apply to it).
S3S_VERSION=0.14.1
DIR=${FERRY_SERVERS_DIR:-/var/cache/ferry-servers}
VENV=$DIR/venv
NODE=$DIR/node
S3S=$DIR/s3s
RUN=$DIR/run
ENVFILE=$RUN/env
WAIT=${FERRY_SERVERS_WAIT:-60}
BUCKET=ferry-test
CONTAINER=ferry-test
AZ_ACCOUNT=devstoreaccount1
AZ_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

# Debian's interpreter if present (a pyenv/other python may move away under the venv).
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi
CURL=(curl --noproxy '*' -s -m 10)
# Loopback only: no proxy may see our requests, no SDK may try the instance-metadata address.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost AWS_EC2_METADATA_DISABLED=true

say() { echo "servers.sh: $*"; }
die() { echo "servers.sh: $*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

apt_install() {
  say "apt-get install $*"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

moto_installed() {
  [ -x "$VENV/bin/moto_server" ] &&
    [ "$(cat "$VENV/.ferry-moto-version" 2>/dev/null)" = "$MOTO_VERSION" ]
}
azurite_installed() {
  [ -f "$NODE/node_modules/azurite/package.json" ] &&
    [ -x "$NODE/node_modules/.bin/azurite-blob" ] &&
    grep -q "\"version\": *\"$AZURITE_VERSION\"" "$NODE/node_modules/azurite/package.json"
}

s3s_installed() {
  [ -x "$S3S/bin/s3s-fs" ] && [ "$(cat "$S3S/.ferry-version" 2>/dev/null)" = "$S3S_VERSION" ]
}

cmd_install() {
  local t0 t
  t0=$(now)
  mkdir -p "$DIR"
  if moto_installed; then
    say "moto $MOTO_VERSION already installed in $VENV"
  else
    t=$(now)
    if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' \
      >"$VENV/.ferry-moto-version"
    [ "$(cat "$VENV/.ferry-moto-version")" = "$MOTO_VERSION" ] || die "moto version mismatch"
    say "installed moto $MOTO_VERSION into $VENV ($(since "$t") s)"
  fi
  if azurite_installed; then
    say "azurite $AZURITE_VERSION already installed in $NODE"
  else
    t=$(now)
    command -v npm >/dev/null || apt_install nodejs npm
    mkdir -p "$NODE"
    npm install --prefix "$NODE" --no-audit --no-fund --loglevel=error \
      "azurite@$AZURITE_VERSION" >/dev/null
    azurite_installed || die "azurite $AZURITE_VERSION not found after npm install"
    say "installed azurite $AZURITE_VERSION into $NODE ($(since "$t") s)"
  fi
  if s3s_installed; then
    say "s3s-fs $S3S_VERSION already installed in $S3S"
  else
    t=$(now)
    command -v cargo >/dev/null || die "cargo is needed to install s3s-fs"
    cargo install --quiet --locked --version "$S3S_VERSION" --features binary --root "$S3S" s3s-fs
    echo "$S3S_VERSION" >"$S3S/.ferry-version"
    say "installed s3s-fs $S3S_VERSION into $S3S ($(since "$t") s)"
  fi
  # mkfs.xfs: the freeze tests run on loop-mounted xfs as well as ext4.
  if command -v mkfs.xfs >/dev/null; then say "xfsprogs already installed"; else apt_install xfsprogs; fi
  t=$(now)
  bash "$(dirname "$0")/kube/build.sh"
  say "kube-apiserver + etcd (tests/kube/build.sh) took $(since "$t") s"
  say "install done in $(since "$t0") s"
}

# Python helper: SharedKey-signed requests to Azurite, plain requests to moto, port picking.
# All requests go to 127.0.0.1 through http.client, which never uses a proxy.
pyhelp() {
  "${PYI:-$PY}" - "$@" <<'EOF'
import base64, hashlib, hmac, http.client, socket, sys
from email.utils import formatdate
from urllib.parse import urlsplit, parse_qsl

def req(port, method, path, body=b"", headers=None):
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data

def az(port, account, key, method, path, body=b"", extra=None):
    """SharedKey-signed request to Azurite (path-style: /account/container[/blob])."""
    h = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
    h.update(extra or {})
    u = urlsplit(path)
    length = str(len(body)) if body else ""
    ctype = h.get("Content-Type", "")
    canon_h = "".join(f"{k.lower()}:{v.strip()}\n" for k, v in
                      sorted(h.items(), key=lambda kv: kv[0].lower())
                      if k.lower().startswith("x-ms-"))
    canon_r = f"/{account}{u.path}"
    q = {}
    for k, v in parse_qsl(u.query, keep_blank_values=True):
        q.setdefault(k.lower(), []).append(v)
    for k in sorted(q):
        canon_r += f"\n{k}:{','.join(sorted(q[k]))}"
    sts = "\n".join([method, "", "", length, "", ctype, "", "", "", "", "", ""]) + "\n" \
        + canon_h + canon_r
    sig = base64.b64encode(hmac.new(base64.b64decode(key), sts.encode(), hashlib.sha256).digest())
    h["Authorization"] = f"SharedKey {account}:{sig.decode()}"
    return req(port, method, path, body, h)

def expect(what, got, ok):
    status, data = got
    if status not in ok:
        sys.exit(f"{what}: HTTP {status} (want {ok}): {data[:300]!r}")
    print(f"  {what}: HTTP {status}")
    return data

cmd = sys.argv[1]
if cmd == "ports":                       # two distinct free loopback ports
    socks = []
    for _ in range(int(sys.argv[2])):
        s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
elif cmd == "mkcontainer":               # port account key container
    port, acct, key, cont = sys.argv[2:6]
    expect(f"azurite create container {cont}",
           az(port, acct, key, "PUT", f"/{acct}/{cont}?restype=container"), (201, 409))
elif cmd == "check":                     # s3port bucket azport account key container
    s3, bucket, azp, acct, key, cont = sys.argv[2:8]
    body = b"hello ferry " + socket.gethostname().encode()
    # moto answers unsigned object requests with 403 (and an unsigned curl --data-binary PUT
    # stores an empty body: werkzeug eats it as a form), so sign with botocore (moto's dep).
    import botocore.session
    from botocore.config import Config
    c = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{s3}",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      proxies={}))
    r = c.put_object(Bucket=bucket, Key="check/obj.txt", Body=body)
    print(f"  moto put object: HTTP {r['ResponseMetadata']['HTTPStatusCode']}")
    r = c.get_object(Bucket=bucket, Key="check/obj.txt")
    assert r["Body"].read() == body
    print(f"  moto get object: HTTP {r['ResponseMetadata']['HTTPStatusCode']}, body matches")
    r = c.list_objects_v2(Bucket=bucket, Prefix="check/")
    assert [o["Key"] for o in r["Contents"]] == ["check/obj.txt"], r
    print(f"  moto list: HTTP {r['ResponseMetadata']['HTTPStatusCode']}, 1 key")
    c.delete_object(Bucket=bucket, Key="check/obj.txt")
    expect("azurite put blob", az(azp, acct, key, "PUT", f"/{acct}/{cont}/check/blob.txt", body,
                                  {"x-ms-blob-type": "BlockBlob"}), (201,))
    d = expect("azurite get blob", az(azp, acct, key, "GET", f"/{acct}/{cont}/check/blob.txt"),
               (200,))
    assert d == body, d
    d = expect("azurite list blobs", az(azp, acct, key, "GET",
               f"/{acct}/{cont}?restype=container&comp=list&prefix=check/"), (200,))
    assert b"<Name>check/blob.txt</Name>" in d, d
    expect("azurite delete blob", az(azp, acct, key, "DELETE", f"/{acct}/{cont}/check/blob.txt"),
           (202,))
    print("check: OK")
else:
    sys.exit(f"pyhelp: unknown {cmd}")
EOF
}

# Is the PID alive and running the expected program (guards against PID reuse)?
alive() { [ -n "${1:-}" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "$2"; }
answers() { [ "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null)" != 000 ]; }
# Has our child PID exited? Not `alive`: between the fork and the exec the child still runs this
# script's command line (a loaded CI run once saw that and stopped a moto that then started
# fine), and PID reuse cannot happen while the child is ours and unreaped (a zombie keeps it).
exited() { [ ! -r "/proc/$1/stat" ] || [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" = Z ]; }

wait_for() { # name pid port log
  local name=$1 pid=$2 port=$3 log=$4 t0=$SECONDS
  while ! answers "$port"; do
    if exited "$pid"; then
      echo "--- tail of $log" >&2; tail -n 30 "$log" >&2 || true
      die "$name (pid $pid) died before answering on 127.0.0.1:$port"
    fi
    if [ $((SECONDS - t0)) -ge "$WAIT" ]; then
      echo "--- tail of $log" >&2; tail -n 30 "$log" >&2 || true
      die "$name (pid $pid) did not answer on 127.0.0.1:$port within $WAIT s"
    fi
    sleep 0.2
  done
}

load_env() { [ -f "$ENVFILE" ] && . "$ENVFILE"; }

running() { # true if the env file's servers are alive and answering
  (
    load_env || exit 1
    alive "${FERRY_TEST_MOTO_PID:-}" moto_server && answers "${FERRY_TEST_S3_ENDPOINT##*:}" &&
      alive "${FERRY_TEST_AZURITE_PID:-}" azurite && answers "${FERRY_TEST_AZURE_ENDPOINT##*:}"
  )
}

cmd_start() {
  local t0 s3port azport mpid apid
  t0=$(now)
  moto_installed && azurite_installed && s3s_installed || die "not installed: run tests/servers.sh install"
  if running; then
    say "already running ($ENVFILE):"; cat "$ENVFILE"; return 0
  fi
  cmd_stop >/dev/null  # leftovers of a half-dead previous start
  mkdir -p "$RUN"
  rm -rf "$RUN/azurite"; mkdir -p "$RUN/azurite"
  read -r s3port azport < <(pyhelp ports 2)
  # setsid: own session/process group, detached from the caller's terminal; $! is the server.
  setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$s3port" \
    >"$RUN/moto.log" 2>&1 </dev/null &
  mpid=$!
  # Azurite 3.35 refuses --inMemoryPersistence together with --location ("not supported when
  # the --location option is set"): keep data in memory and run it from a scratch directory.
  (cd "$RUN/azurite" && exec setsid node "$NODE/node_modules/azurite/dist/src/blob/main.js" \
    --blobHost 127.0.0.1 --blobPort "$azport" --inMemoryPersistence --disableTelemetry \
    --skipApiVersionCheck --silent >"$RUN/azurite.log" 2>&1 </dev/null) &
  apid=$!
  # Record PIDs at once so stop can clean up even if the waits below fail.
  printf 'FERRY_TEST_MOTO_PID=%s\nFERRY_TEST_AZURITE_PID=%s\n' "$mpid" "$apid" >"$RUN/pids"
  trap 'echo "servers.sh: start failed, stopping what it started" >&2; cmd_stop >&2' EXIT
  wait_for moto "$mpid" "$s3port" "$RUN/moto.log"
  wait_for azurite "$apid" "$azport" "$RUN/azurite.log"
  local code
  code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$s3port/$BUCKET")
  case $code in 200|409) echo "  moto create bucket $BUCKET: HTTP $code" ;;
    *) die "moto: creating bucket $BUCKET gave HTTP $code" ;; esac
  pyhelp mkcontainer "$azport" "$AZ_ACCOUNT" "$AZ_KEY" "$CONTAINER"
  cat >"$ENVFILE.tmp" <<EOF
export FERRY_TEST_S3_ENDPOINT=http://127.0.0.1:$s3port
export FERRY_TEST_S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export FERRY_TEST_AZURE_ENDPOINT=http://127.0.0.1:$azport
export FERRY_TEST_AZURE_CONTAINER=$CONTAINER
export AZURE_STORAGE_ACCOUNT=$AZ_ACCOUNT
export AZURE_STORAGE_KEY='$AZ_KEY'
export AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$azport
export FERRY_TEST_S3S_FS=$S3S/bin/s3s-fs
export FERRY_TEST_MOTO_PID=$mpid
export FERRY_TEST_AZURITE_PID=$apid
EOF
  mv "$ENVFILE.tmp" "$ENVFILE"
  trap - EXIT
  say "started moto (pid $mpid, port $s3port) and azurite (pid $apid, port $azport)" \
    "in $(since "$t0") s; $ENVFILE:"
  cat "$ENVFILE"
}

kill_one() { # name pid pattern
  local name=$1 pid=$2 pat=$3 i
  alive "$pid" "$pat" || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do alive "$pid" "$pat" || break; sleep 0.1; done
  if alive "$pid" "$pat"; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  say "stopped $name (pid $pid)"
}

cmd_stop() {
  local f
  for f in "$RUN/pids" "$ENVFILE"; do
    [ -f "$f" ] || continue
    (
      . "$f"
      kill_one moto "${FERRY_TEST_MOTO_PID:-}" moto_server
      kill_one azurite "${FERRY_TEST_AZURITE_PID:-}" azurite
    )
  done
  rm -f "$ENVFILE" "$ENVFILE.tmp" "$RUN/pids"
  say "stopped"
}

cmd_status() {
  local rc=0
  moto_installed && say "moto $MOTO_VERSION installed" || { say "moto not installed"; rc=3; }
  azurite_installed && say "azurite $AZURITE_VERSION installed" || { say "azurite not installed"; rc=3; }
  if ! [ -f "$ENVFILE" ]; then say "not running (no $ENVFILE)"; return 3; fi
  (
    load_env
    r=0
    if alive "$FERRY_TEST_MOTO_PID" moto_server && answers "${FERRY_TEST_S3_ENDPOINT##*:}"; then
      say "moto up: pid $FERRY_TEST_MOTO_PID, $FERRY_TEST_S3_ENDPOINT"
    else say "moto DOWN (pid $FERRY_TEST_MOTO_PID, $FERRY_TEST_S3_ENDPOINT)"; r=3; fi
    if alive "$FERRY_TEST_AZURITE_PID" azurite && answers "${FERRY_TEST_AZURE_ENDPOINT##*:}"; then
      say "azurite up: pid $FERRY_TEST_AZURITE_PID, $FERRY_TEST_AZURE_ENDPOINT"
    else say "azurite DOWN (pid $FERRY_TEST_AZURITE_PID, $FERRY_TEST_AZURE_ENDPOINT)"; r=3; fi
    exit $r
  ) || rc=3
  return $rc
}

cmd_check() {
  [ -f "$ENVFILE" ] || die "not running: tests/servers.sh start"
  load_env
  PYI=$VENV/bin/python pyhelp check "${FERRY_TEST_S3_ENDPOINT##*:}" "$FERRY_TEST_S3_BUCKET" \
    "${FERRY_TEST_AZURE_ENDPOINT##*:}" "$AZURE_STORAGE_ACCOUNT" "$AZURE_STORAGE_KEY" \
    "$FERRY_TEST_AZURE_CONTAINER"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  check) cmd_check ;;
  *) echo "usage: $0 install|start|stop|status|check" >&2; exit 2 ;;
esac
