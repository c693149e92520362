#!/usr/bin/env bash
# start.sh -- a real etcd and kube-apiserver on 127.0.0.1 for the agent's tests.
#
#   tests/kube/start.sh DIR            start etcd + kube-apiserver with everything in DIR (created
#                                      if missing), install tests/kube/crds/*.yaml and the
#                                      repository's deploy/crds/*.yaml (if that directory
#                                      exists), create the namespace velero, write DIR/env and
#                                      DIR/*.kubeconfig.
#                                      Whatever of DIR still runs is stopped first; existing
#                                      certificates, tokens and etcd data in DIR are kept.
#   tests/kube/start.sh DIR apiserver  (re)start only kube-apiserver: same port, certificates and
#                                      tokens; etcd (and so every object) is kept. Needs a DIR
#                                      where a full start ran and whose etcd still runs.
#
# Files in DIR: env (sourceable, see below), admin.kubeconfig, agent.kubeconfig, certs/ (ca.crt
# and the serving certificate, kube-apiserver's kubelet client certificate, service-account
# keys), tokens.csv, etcd/ (data), etcd.log, apiserver.log, etcd.pid, apiserver.pid, ports.
#
# DIR/env exports:
#   FERRY_KUBE_URL            https://127.0.0.1:PORT (the certificate has IP:127.0.0.1, DNS:localhost)
#   FERRY_KUBE_CA             DIR/certs/ca.crt, the CA that signed the serving certificate
#   FERRY_KUBE_ADMIN_TOKEN    bearer token of user ferry-admin, group system:masters
#   FERRY_KUBE_AGENT_TOKEN    bearer token of user ferry-agent (only system:authenticated): it
#                             may do nothing until a test grants it RBAC
#   FERRY_KUBE_ADMIN_KUBECONFIG, FERRY_KUBE_AGENT_KUBECONFIG   the two kubeconfig files
#   FERRY_KUBE_ETCD_URL       http://127.0.0.1:PORT (etcd's client URL)
#   FERRY_KUBE_DIR            DIR (absolute)
#   FERRY_KUBE_TEST_KUBELET   the ferry-test-kubelet binary (tests start it, one per Node name,
#                             to make pods/exec work: see README.md)
#
# Binaries: $FERRY_SERVERS_DIR/kube/bin (tests/kube/build.sh), or FERRY_KUBE_BIN.
#   FERRY_KUBE_WAIT  seconds to wait for each server to be ready (default 90)
# Nothing here contacts anything but 127.0.0.1.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

say() { echo "kube/start.sh: $*"; }
die() { echo "kube/start.sh: $*" >&2; exit 1; }

if [ $# -lt 1 ] || [ $# -gt 2 ]; then echo "usage: $0 DIR [apiserver]" >&2; exit 2; fi
mode=${2:-all}
case $mode in all|apiserver) ;; *) echo "usage: $0 DIR [apiserver]" >&2; exit 2 ;; esac
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
WAIT=${FERRY_KUBE_WAIT:-90}
CERTS=$DIR/certs
T0=$(now)

for b in etcd kube-apiserver; do
  [ -x "$KUBE_BIN/$b" ] || die "$KUBE_BIN/$b missing: run tests/kube/build.sh"
done
command -v openssl >/dev/null || die "openssl is needed"
command -v curl >/dev/null || die "curl is needed"

# ---- identity: CA, serving certificate, service-account key, tokens (made once per DIR) ----
make_certs() {
  [ -s "$CERTS/ca.crt" ] && [ -s "$CERTS/serving.crt" ] && [ -s "$CERTS/serving.key" ] &&
    [ -s "$CERTS/sa.key" ] && [ -s "$CERTS/sa.pub" ] && return 0
  mkdir -p "$CERTS"
  chmod 700 "$CERTS"
  # An explicit CA (basicConstraints CA:TRUE, keyCertSign) and a leaf signed by it: rustls and
  # every other verifier accept ca.crt as a trust anchor and the leaf as an end entity.
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=ferry-test-kube-ca" -keyout "$CERTS/ca.key" -out "$CERTS/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=kube-apiserver" -keyout "$CERTS/serving.key" -out "$CERTS/serving.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$CERTS/serving.ext"
  openssl x509 -req -in "$CERTS/serving.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" \
    -CAcreateserial -days 3650 -extfile "$CERTS/serving.ext" -out "$CERTS/serving.crt" 2>/dev/null
  rm -f "$CERTS/serving.csr" "$CERTS/serving.ext" "$CERTS/ca.srl"
  # Service-account token signing key (private) and its public half for verification.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$CERTS/sa.key" 2>/dev/null
  openssl pkey -in "$CERTS/sa.key" -pubout -out "$CERTS/sa.pub"
  openssl verify -CAfile "$CERTS/ca.crt" "$CERTS/serving.crt" >/dev/null ||
    die "generated serving certificate does not verify against ca.crt"
}

make_tokens() {
  [ -s "$DIR/tokens.csv" ] && return 0
  # token,user,uid[,"group,group"] (k8s.io/apiserver tokenfile). ferry-agent has no group of
  # its own: every right it has comes from RBAC objects the tests create.
  printf '%s,ferry-admin,ferry-admin,"system:masters"\n%s,ferry-agent,ferry-agent\n' \
    "$(openssl rand -hex 24)" "$(openssl rand -hex 24)" >"$DIR/tokens.csv.tmp"
  chmod 600 "$DIR/tokens.csv.tmp"
  mv "$DIR/tokens.csv.tmp" "$DIR/tokens.csv"
}
token_of() { awk -F, -v u="$1" '$2 == u { print $1 }' "$DIR/tokens.csv"; }

# The client certificate kube-apiserver shows kubelets (pods/exec, pods/log, ...): signed by
# ca.crt, so a test kubelet run with --client-ca "$FERRY_KUBE_CA" lets only kube-apiserver in.
# Made separately from make_certs, so a DIR from before it gets one too.
make_kubelet_client_cert() {
  [ -s "$CERTS/kubelet-client.crt" ] && [ -s "$CERTS/kubelet-client.key" ] && return 0
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$CERTS/kubelet-client.key" -out "$CERTS/kubelet-client.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth" >"$CERTS/kubelet-client.ext"
  openssl x509 -req -in "$CERTS/kubelet-client.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" \
    -CAcreateserial -days 3650 -extfile "$CERTS/kubelet-client.ext" \
    -out "$CERTS/kubelet-client.crt" 2>/dev/null
  rm -f "$CERTS/kubelet-client.csr" "$CERTS/kubelet-client.ext" "$CERTS/ca.srl"
  openssl verify -CAfile "$CERTS/ca.crt" "$CERTS/kubelet-client.crt" >/dev/null ||
    die "generated kubelet client certificate does not verify against ca.crt"
}

free_ports() { # N distinct free TCP ports on 127.0.0.1
  "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ---- processes ----
launch() { # NAME LOG BINARY ARGS...: detached (own session), PID recorded in DIR/NAME.pid
  local name=$1 log=$2 pid i
  shift 2
  setsid "$@" >>"$log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$DIR/$name.pid"
  # Until the child has exec'd, /proc shows this shell's command line, and `alive` would call
  # the server dead: wait for the binary's (a loaded machine can take a while to schedule the
  # child; CI once failed an agent test here, with an empty etcd.log).
  for ((i = 0; i < 300; i++)); do
    case $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) in *"$1"*) return 0 ;; esac
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
}

fail_with_log() { # NAME LOG MESSAGE
  echo "--- tail of $2" >&2
  tail -n 40 "$2" >&2 || true
  die "$1: $3"
}

start_etcd() {
  : >>"$DIR/etcd.log"
  launch etcd "$DIR/etcd.log" "$KUBE_BIN/etcd" \
    --name=default --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$PEER_PORT" \
    --initial-cluster="default=http://127.0.0.1:$PEER_PORT" \
    --unsafe-no-fsync=true
  local pid t0=$SECONDS
  pid=$(pidof_in "$DIR" etcd)
  until curl --noproxy '*' -sf -m 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null |
    grep -q '"health":"true"'; do
    running "$pid" || fail_with_log etcd "$DIR/etcd.log" "exited before it was healthy"
    [ $((SECONDS - t0)) -lt "$WAIT" ] ||
      fail_with_log etcd "$DIR/etcd.log" "not healthy after $WAIT s"
    sleep 0.1
  done
}

admin_curl() { # curl to the API server as ferry-admin; extra arguments follow
  curl --noproxy '*' -sS -m 10 --cacert "$CERTS/ca.crt" \
    -H "Authorization: Bearer $(token_of ferry-admin)" "$@"
}

start_apiserver() {
  : >>"$DIR/apiserver.log"
  launch apiserver "$DIR/apiserver.log" "$KUBE_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --cert-dir="$CERTS" \
    --tls-cert-file="$CERTS/serving.crt" --tls-private-key-file="$CERTS/serving.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --service-account-issuer="https://127.0.0.1:$API_PORT/" \
    --service-account-key-file="$CERTS/sa.pub" \
    --service-account-signing-key-file="$CERTS/sa.key" \
    --authorization-mode=RBAC \
    --token-auth-file="$DIR/tokens.csv" \
    --disable-admission-plugins=ServiceAccount \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --kubelet-client-certificate="$CERTS/kubelet-client.crt" \
    --kubelet-client-key="$CERTS/kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname
  local pid t0=$SECONDS
  pid=$(pidof_in "$DIR" apiserver)
  until [ "$(admin_curl -o /dev/null -w '%{http_code}' "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" = 200 ]; do
    running "$pid" ||
      fail_with_log kube-apiserver "$DIR/apiserver.log" "exited before it was ready"
    [ $((SECONDS - t0)) -lt "$WAIT" ] ||
      fail_with_log kube-apiserver "$DIR/apiserver.log" "not ready after $WAIT s"
    sleep 0.2
  done
}

# CRDs: server-side apply of the YAML files as they are (the API server reads YAML; no
# conversion, create-or-update in one request), then wait until each is Established and its
# resources are served. The files: the test CRDs of crds/, then Ferry's own, deploy/crds/ of the
# repository, if that directory exists. One CRD per file.
shopt -s nullglob
CRD_FILES=("$KUBE_HERE"/crds/*.yaml)
DEPLOY_CRDS=$(cd "$KUBE_HERE/../.." && pwd)/deploy/crds
if [ -d "$DEPLOY_CRDS" ]; then CRD_FILES+=("$DEPLOY_CRDS"/*.yaml); fi
shopt -u nullglob

crd_name() { awk '/^metadata:/ { m = 1; next } m && /^  name:/ { print $2; exit }' "$1"; }
crd_names() {
  local f
  for f in "${CRD_FILES[@]}"; do crd_name "$f"; done
}

apply_crds() {
  local f name code
  for f in "${CRD_FILES[@]}"; do
    [ "$(grep -c '^kind: *CustomResourceDefinition *$' "$f")" = 1 ] ||
      die "$f: not one CustomResourceDefinition (one CRD per file, kind: at column 0)"
    name=$(crd_name "$f")
    [ -n "$name" ] || die "$f: no metadata.name"
    code=$(admin_curl -o "$DIR/.apply.out" -w '%{http_code}' -X PATCH \
      -H 'Content-Type: application/apply-patch+yaml' --data-binary "@$f" \
      "https://127.0.0.1:$API_PORT/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$name?fieldManager=ferry-tests&force=true")
    case $code in
      200|201) ;;
      *) cat "$DIR/.apply.out" >&2; echo >&2; die "applying $f: HTTP $code" ;;
    esac
  done
  rm -f "$DIR/.apply.out"
}

# Waits until every CRD of CRD_FILES is Established and a list of its resources answers 200.
wait_crds() {
  local name t0=$SECONDS path
  for name in $(crd_names); do
    until path=$(admin_curl "https://127.0.0.1:$API_PORT/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$name" 2>/dev/null |
      "$PY" -c '
import json, sys
d = json.load(sys.stdin)
conds = {c["type"]: c["status"] for c in d.get("status", {}).get("conditions", [])}
if conds.get("Established") != "True": sys.exit(1)
s = d["spec"]
v = next(v["name"] for v in s["versions"] if v.get("storage"))
print("/apis/%s/%s/%s" % (s["group"], v, s["names"]["plural"]))
' 2>/dev/null) &&
      [ "$(admin_curl -o /dev/null -w '%{http_code}' "https://127.0.0.1:$API_PORT$path?limit=1" 2>/dev/null)" = 200 ]; do
      [ $((SECONDS - t0)) -lt "$WAIT" ] || die "CRD $name not established and served after $WAIT s"
      sleep 0.2
    done
  done
}

ensure_namespace() {
  local code
  code=$(admin_curl -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"'"$1"'"}}' \
    "https://127.0.0.1:$API_PORT/api/v1/namespaces")
  case $code in 201|409) ;; *) die "creating namespace $1: HTTP $code" ;; esac
}

write_kubeconfig() { # FILE USER
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ferry-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $CERTS/ca.crt
users:
- name: $2
  user:
    token: $(token_of "$2")
contexts:
- name: ferry-test
  context:
    cluster: ferry-test
    user: $2
    namespace: velero
current-context: ferry-test
EOF
  chmod 600 "$1.tmp"
  mv "$1.tmp" "$1"
}

write_env() {
  {
    printf 'export FERRY_KUBE_URL=%q\n' "https://127.0.0.1:$API_PORT"
    printf 'export FERRY_KUBE_CA=%q\n' "$CERTS/ca.crt"
    printf 'export FERRY_KUBE_ADMIN_TOKEN=%q\n' "$(token_of ferry-admin)"
    printf 'export FERRY_KUBE_AGENT_TOKEN=%q\n' "$(token_of ferry-agent)"
    printf 'export FERRY_KUBE_ADMIN_KUBECONFIG=%q\n' "$DIR/admin.kubeconfig"
    printf 'export FERRY_KUBE_AGENT_KUBECONFIG=%q\n' "$DIR/agent.kubeconfig"
    printf 'export FERRY_KUBE_ETCD_URL=%q\n' "http://127.0.0.1:$ETCD_PORT"
    printf 'export FERRY_KUBE_DIR=%q\n' "$DIR"
    printf 'export FERRY_KUBE_TEST_KUBELET=%q\n' "$KUBE_BIN/ferry-test-kubelet"
  } >"$DIR/env.tmp"
  chmod 600 "$DIR/env.tmp"
  mv "$DIR/env.tmp" "$DIR/env"
}

# ---- main ----
if [ "$mode" = apiserver ]; then
  if ! [ -s "$DIR/ports" ] || ! [ -s "$DIR/tokens.csv" ] || ! [ -s "$CERTS/ca.crt" ]; then
    die "$DIR: no full start ran there (tests/kube/start.sh $DIR)"
  fi
  read -r ETCD_PORT PEER_PORT API_PORT <"$DIR/ports"
  alive "$(pidof_in "$DIR" etcd)" etcd "$DIR" || die "etcd of $DIR is not running"
  make_kubelet_client_cert
  stop_one "$DIR" apiserver kube-apiserver
  start_apiserver
  wait_crds
  say "kube-apiserver (pid $(pidof_in "$DIR" apiserver)) ready again on 127.0.0.1:$API_PORT" \
    "in $(since "$T0") s"
  exit 0
fi

"$(dirname "$0")/stop.sh" "$DIR" >/dev/null
make_certs
make_kubelet_client_cert
make_tokens
read -r ETCD_PORT PEER_PORT API_PORT < <(free_ports 3)
echo "$ETCD_PORT $PEER_PORT $API_PORT" >"$DIR/ports"
rm -f "$DIR/env"
trap 'echo "kube/start.sh: start failed, stopping what it started" >&2; "$(dirname "$0")/stop.sh" "$DIR" >&2' EXIT
start_etcd
t_etcd=$(since "$T0")
start_apiserver
t_api=$(since "$T0")
apply_crds
wait_crds
ensure_namespace velero
write_kubeconfig "$DIR/admin.kubeconfig" ferry-admin
write_kubeconfig "$DIR/agent.kubeconfig" ferry-agent
write_env
trap - EXIT
say "etcd (pid $(pidof_in "$DIR" etcd), 127.0.0.1:$ETCD_PORT) healthy at ${t_etcd} s," \
  "kube-apiserver (pid $(pidof_in "$DIR" apiserver), 127.0.0.1:$API_PORT) ready at ${t_api} s," \
  "CRDs established, all ready in $(since "$T0") s; env: $DIR/env"
