#!/usr/bin/env bash
# smoke.sh -- end-to-end check of tests/kube: start etcd + kube-apiserver in a scratch
# directory, check the version, the CRDs, token authentication and RBAC, restart only the API
# server (etcd kept), run pods/exec through ferry-test-kubelet, check that nothing but loopback
# is used, stop. Exits non-zero on any failure. Needs the binaries of tests/kube/build.sh.
#   FERRY_KUBE_SMOKE_DIR  use this directory instead of a fresh temporary one (kept afterwards)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

say() { echo "kube/smoke.sh: $*"; }
fail() { echo "kube/smoke.sh: FAIL: $*" >&2; exit 1; }

if [ -n "${FERRY_KUBE_SMOKE_DIR:-}" ]; then
  W=$FERRY_KUBE_SMOKE_DIR; keep=1
else
  W=$(mktemp -d -t ferry-kube-smoke.XXXXXX); keep=0
fi
kpid=
cleanup() {
  local rc=$?
  if [ -n "$kpid" ]; then kill -TERM "$kpid" 2>/dev/null || true; fi
  "$HERE/stop.sh" "$W" || true
  if [ $rc -ne 0 ]; then
    echo "--- tail of $W/apiserver.log" >&2; tail -n 20 "$W/apiserver.log" >&2 || true
    echo "--- tail of $W/etcd.log" >&2; tail -n 20 "$W/etcd.log" >&2 || true
  fi
  [ $keep = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

t=$(now)
"$HERE/start.sh" "$W"
say "start.sh to ready: $(since "$t") s"
# shellcheck source=/dev/null
. "$W/env"
API=$FERRY_KUBE_URL
DU=/apis/velero.io/v2alpha1/namespaces/velero/datauploads

# req TOKEN METHOD PATH [JSON BODY] [CONTENT-TYPE]: body to $W/out, prints the HTTP status.
req() {
  local args=(--noproxy '*' -sS -m 20 --cacert "$FERRY_KUBE_CA" -H "Authorization: Bearer $1"
    -X "$2" -o "$W/out" -w '%{http_code}')
  [ $# -ge 4 ] && args+=(-H "Content-Type: ${5:-application/json}" --data-binary "$4")
  curl "${args[@]}" "$API$3"
}
expect() { # WHAT WANT GOT
  [ "$3" = "$2" ] || { cat "$W/out" >&2 2>/dev/null; echo >&2; fail "$1: HTTP $3, want $2"; }
  say "ok: $1 (HTTP $3)"
}
jq_() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$W/out" "$1"; }

# The TLS setup a Rust client will see: ca.crt is a CA, the serving certificate verifies
# against it with the host 127.0.0.1.
openssl x509 -in "$FERRY_KUBE_CA" -noout -ext basicConstraints | grep -q 'CA:TRUE' ||
  fail "ca.crt is not a CA certificate"
echo | openssl s_client -connect "${API#https://}" -CAfile "$FERRY_KUBE_CA" \
  -verify_ip 127.0.0.1 -verify_return_error -brief 2>&1 | grep -q 'Verification: OK' ||
  fail "the serving certificate does not verify against FERRY_KUBE_CA for 127.0.0.1"
say "ok: serving certificate verifies against FERRY_KUBE_CA (IP 127.0.0.1)"

expect "GET /version" 200 "$(req "$FERRY_KUBE_ADMIN_TOKEN" GET /version)"
v=$(jq_ 'd["gitVersion"]')
[ "$v" = v1.34.10 ] || fail "/version gitVersion is $v, want v1.34.10"
say "ok: /version gitVersion $v"

for f in "$HERE"/crds/*.yaml; do
  name=$(awk '/^metadata:/ { m = 1; next } m && /^  name:/ { print $2; exit }' "$f")
  expect "CRD $name" 200 \
    "$(req "$FERRY_KUBE_ADMIN_TOKEN" GET "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$name")"
  [ "$(jq_ '[c["status"] for c in d["status"]["conditions"] if c["type"]=="Established"][0]')" = True ] ||
    fail "CRD $name not Established"
done
expect "namespace velero" 200 "$(req "$FERRY_KUBE_ADMIN_TOKEN" GET /api/v1/namespaces/velero)"

# A DataUpload as Velero's CSI action creates it (no status).
du='{"apiVersion":"velero.io/v2alpha1","kind":"DataUpload",
 "metadata":{"name":"smoke-du","namespace":"velero","labels":{"velero.io/backup-name":"b1"}},
 "spec":{"snapshotType":"CSI","csiSnapshot":{"volumeSnapshot":"vs1","storageClass":"sc1",
  "snapshotClass":"vsc1","driver":"hostpath.csi.k8s.io"},"sourcePVC":"data","datamover":"ferry",
  "backupStorageLocation":"default","sourceNamespace":"app","dataMoverConfig":{"k":"v"},
  "operationTimeout":"10m0s"}}'
expect "admin creates DataUpload" 201 "$(req "$FERRY_KUBE_ADMIN_TOKEN" POST "$DU" "$du")"
expect "admin reads DataUpload" 200 "$(req "$FERRY_KUBE_ADMIN_TOKEN" GET "$DU/smoke-du")"
[ "$(jq_ 'd["spec"]["datamover"], d["spec"]["csiSnapshot"]["volumeSnapshot"], d["spec"]["operationTimeout"]')" = \
  "('ferry', 'vs1', '10m0s')" ] || fail "DataUpload read back differs: $(cat "$W/out")"
uid=$(jq_ 'd["metadata"]["uid"]')
# No status subresource: status is written through the main resource (as Velero does).
expect "merge-patch status.phase=Accepted on the main resource" 200 \
  "$(req "$FERRY_KUBE_ADMIN_TOKEN" PATCH "$DU/smoke-du" \
    '{"status":{"phase":"Accepted","acceptedByNode":"n1"}}' application/merge-patch+json)"
[ "$(jq_ 'd["status"]["phase"]')" = Accepted ] || fail "status.phase not stored"
expect "no /status subresource on datauploads" 404 "$(req "$FERRY_KUBE_ADMIN_TOKEN" GET "$DU/smoke-du/status")"
expect "phase outside the enum is rejected" 422 \
  "$(req "$FERRY_KUBE_ADMIN_TOKEN" PATCH "$DU/smoke-du" '{"status":{"phase":"Bogus"}}' \
    application/merge-patch+json)"
expect "DataUpload without operationTimeout is rejected" 422 \
  "$(req "$FERRY_KUBE_ADMIN_TOKEN" POST "$DU" \
    '{"apiVersion":"velero.io/v2alpha1","kind":"DataUpload","metadata":{"name":"bad","namespace":"velero"},"spec":{"snapshotType":"CSI","sourcePVC":"p","backupStorageLocation":"d","sourceNamespace":"a"}}')"
# VolumeSnapshot has a status subresource (as external-snapshotter's CRD).
expect "admin creates VolumeSnapshot" 201 \
  "$(req "$FERRY_KUBE_ADMIN_TOKEN" POST /apis/snapshot.storage.k8s.io/v1/namespaces/velero/volumesnapshots \
    '{"apiVersion":"snapshot.storage.k8s.io/v1","kind":"VolumeSnapshot","metadata":{"name":"vs1"},"spec":{"source":{"persistentVolumeClaimName":"data"},"volumeSnapshotClassName":"c"}}')"
expect "VolumeSnapshot status through /status" 200 \
  "$(req "$FERRY_KUBE_ADMIN_TOKEN" PATCH /apis/snapshot.storage.k8s.io/v1/namespaces/velero/volumesnapshots/vs1/status \
    '{"status":{"readyToUse":true,"restoreSize":"1Gi","boundVolumeSnapshotContentName":"snapcontent-1"}}' \
    application/merge-patch+json)"
[ "$(jq_ 'd["status"]["readyToUse"], d["status"]["restoreSize"]')" = "(True, '1Gi')" ] ||
  fail "VolumeSnapshot status not stored: $(cat "$W/out")"

# ferry-agent: nothing before RBAC, exactly the granted rights after.
expect "ferry-agent lists datauploads before RBAC: forbidden" 403 \
  "$(req "$FERRY_KUBE_AGENT_TOKEN" GET "$DU")"
expect "an unknown token is unauthorized" 401 "$(req not-a-token GET "$DU")"
expect "admin creates Role ferry-agent" 201 \
  "$(req "$FERRY_KUBE_ADMIN_TOKEN" POST /apis/rbac.authorization.k8s.io/v1/namespaces/velero/roles \
    '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"ferry-agent"},"rules":[{"apiGroups":["velero.io"],"resources":["datauploads","datadownloads"],"verbs":["get","list","watch","update","patch"]}]}')"
expect "admin creates RoleBinding ferry-agent" 201 \
  "$(req "$FERRY_KUBE_ADMIN_TOKEN" POST /apis/rbac.authorization.k8s.io/v1/namespaces/velero/rolebindings \
    '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"ferry-agent"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"ferry-agent"},"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"ferry-agent"}]}')"
# The RBAC authorizer works from an informer cache: allow it a moment to see the binding.
for _ in $(seq 50); do
  [ "$(req "$FERRY_KUBE_AGENT_TOKEN" GET "$DU")" = 200 ] && break
  sleep 0.1
done
expect "ferry-agent lists datauploads after RBAC" 200 "$(req "$FERRY_KUBE_AGENT_TOKEN" GET "$DU")"
[ "$(jq_ '[i["metadata"]["name"] for i in d["items"]]')" = "['smoke-du']" ] ||
  fail "agent list: $(cat "$W/out")"
expect "ferry-agent deletes a DataUpload: forbidden (not granted)" 403 \
  "$(req "$FERRY_KUBE_AGENT_TOKEN" DELETE "$DU/smoke-du")"
expect "ferry-agent lists secrets: forbidden" 403 \
  "$(req "$FERRY_KUBE_AGENT_TOKEN" GET /api/v1/namespaces/velero/secrets)"

# Restart only the API server: same URL, etcd (and the object) kept.
epid=$(cat "$W/etcd.pid"); apid=$(cat "$W/apiserver.pid")
t=$(now)
"$HERE/stop.sh" "$W" apiserver
alive "$apid" kube-apiserver "$W" && fail "kube-apiserver still runs after stop.sh DIR apiserver"
alive "$epid" etcd "$W" || fail "etcd stopped by stop.sh DIR apiserver"
[ "$(req "$FERRY_KUBE_ADMIN_TOKEN" GET /version 2>/dev/null)" = 000 ] || fail "API server still answers"
"$HERE/start.sh" "$W" apiserver
say "API server restart (stop + start) took $(since "$t") s"
[ "$(cat "$W/etcd.pid")" = "$epid" ] || fail "etcd was restarted"
# shellcheck source=/dev/null
. "$W/env"
[ "$FERRY_KUBE_URL" = "$API" ] || fail "URL changed: $FERRY_KUBE_URL"
expect "admin reads DataUpload after the API server restart" 200 \
  "$(req "$FERRY_KUBE_ADMIN_TOKEN" GET "$DU/smoke-du")"
[ "$(jq_ 'd["metadata"]["uid"], d["status"]["phase"]')" = "('$uid', 'Accepted')" ] ||
  fail "DataUpload changed across the restart: $(cat "$W/out")"
expect "ferry-agent still allowed after the restart" 200 "$(req "$FERRY_KUBE_AGENT_TOKEN" GET "$DU/smoke-du")"
"$HERE/start.sh" "$W" apiserver >/dev/null || fail "start.sh DIR apiserver on a running API server"
say "ok: start.sh DIR apiserver restarts a running API server"

# pods/exec: kube-apiserver -> ferry-test-kubelet (its client certificate, the Node's address
# and port), both protocols kube-apiserver speaks to a kubelet (a WebSocket v5 client is
# translated to SPDY; a SPDY client is proxied as is).
if [ -x "$FERRY_KUBE_TEST_KUBELET" ]; then
  t=$(now)
  "$FERRY_KUBE_TEST_KUBELET" --kubeconfig "$FERRY_KUBE_ADMIN_KUBECONFIG" --node smoke-node \
    --ready-file "$W/kubelet.port" --client-ca "$FERRY_KUBE_CA" >>"$W/kubelet.log" 2>&1 </dev/null &
  kpid=$!
  for _ in $(seq 200); do
    [ -s "$W/kubelet.port" ] && break
    kill -0 "$kpid" 2>/dev/null || { cat "$W/kubelet.log" >&2; fail "ferry-test-kubelet exited"; }
    sleep 0.1
  done
  [ -s "$W/kubelet.port" ] || fail "ferry-test-kubelet not ready after 20 s"
  kport=$(cat "$W/kubelet.port")
  say "ok: ferry-test-kubelet ready on port $kport in $(since "$t") s"
  expect "GET node smoke-node" 200 "$(req "$FERRY_KUBE_ADMIN_TOKEN" GET /api/v1/nodes/smoke-node)"
  [ "$(jq_ '[c["status"] for c in d["status"]["conditions"] if c["type"]=="Ready"][0], d["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], d["status"]["addresses"][0]["address"]')" = \
    "('True', $kport, '127.0.0.1')" ] || fail "node status: $(cat "$W/out")"
  # (nodes/NAME/proxy cannot show it: kube-apiserver refuses to proxy to a loopback address.)
  [ "$(curl --noproxy '*' -sk -m 5 --cert "$W/certs/kubelet-client.crt" \
    --key "$W/certs/kubelet-client.key" "https://127.0.0.1:$kport/healthz")" = ok ] ||
    fail "the kubelet refuses kube-apiserver's client certificate"
  curl --noproxy '*' -sk -m 5 -o /dev/null "https://127.0.0.1:$kport/healthz" &&
    fail "the kubelet answers a client without a certificate"
  say "ok: the kubelet takes kube-apiserver's client certificate and refuses a client without one"
  expect "admin creates pod smoke-pod on smoke-node" 201 \
    "$(req "$FERRY_KUBE_ADMIN_TOKEN" POST /api/v1/namespaces/velero/pods \
      '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"smoke-pod"},"spec":{"nodeName":"smoke-node","containers":[{"name":"app","image":"none"},{"name":"side","image":"none"}]}}')"
  kx() { "$FERRY_KUBE_TEST_KUBELET" exec --kubeconfig "$FERRY_KUBE_ADMIN_KUBECONFIG" "$@"; }
  for proto in websocket spdy; do
    flag=(); [ $proto = spdy ] && flag=(--spdy)
    t=$(now); rc=0
    # shellcheck disable=SC2016 # expanded by the exec'd shell
    out=$(kx "${flag[@]}" --container side velero smoke-pod -- \
      sh -c 'echo "$FERRY_POD_NAMESPACE/$FERRY_POD_NAME/$FERRY_CONTAINER"; echo err >&2; exit 3' \
      2>"$W/exec.err") || rc=$?
    [ "$out/$(cat "$W/exec.err")/$rc" = "velero/smoke-pod/side/err/3" ] ||
      fail "exec ($proto): stdout '$out', stderr '$(cat "$W/exec.err")', exit $rc"
    say "ok: exec ($proto): stdout, stderr, exit code 3 ($(since "$t") s)"
    rc=0
    kx "${flag[@]}" --container nope velero smoke-pod -- true 2>"$W/exec.err" || rc=$?
    if [ $rc != 1 ] || ! grep -q 'container nope is not valid for pod smoke-pod' "$W/exec.err"; then
      fail "exec ($proto) in an unknown container: exit $rc, $(cat "$W/exec.err")"
    fi
    say "ok: exec ($proto) in an unknown container: $(tail -n 1 "$W/exec.err")"
    marker="smoke-marker-$$-$proto"
    rc=0
    kx "${flag[@]}" --container app --timeout 1s velero smoke-pod -- sh -c "sleep 30; : $marker" \
      2>"$W/exec.err" || rc=$?
    [ $rc = 124 ] || fail "exec ($proto) of sleep 30 with a 1 s timeout: exit $rc, $(cat "$W/exec.err")"
    t=$(now)
    for _ in $(seq 50); do pgrep -f "$marker" >/dev/null || break; sleep 0.1; done
    pgrep -f "$marker" >/dev/null && fail "exec ($proto): the command still runs 5 s after the client left"
    say "ok: exec ($proto): the command is killed when the client leaves (gone $(since "$t") s after)"
  done
  bad=$(ss -Htuanp | grep -E "pid=$kpid," |
    awk '{ if ($5 !~ /^127\.0\.0\.1:/ || ($6 !~ /^127\.0\.0\.1:/ && $2 != "LISTEN")) print }' || true)
  [ -z "$bad" ] || fail "non-loopback sockets of ferry-test-kubelet: $bad"
  say "ok: all sockets of ferry-test-kubelet are on 127.0.0.1"
  kill -TERM "$kpid"
  rc=0; wait "$kpid" || rc=$?
  kpid=
  [ $rc = 0 ] || fail "ferry-test-kubelet exited with $rc on SIGTERM"
  say "ok: ferry-test-kubelet exits 0 on SIGTERM"
else
  say "SKIP: pods/exec ($FERRY_KUBE_TEST_KUBELET not built)"
fi

# Loopback only: every TCP/UDP socket of both servers is on 127.0.0.1.
apid=$(cat "$W/apiserver.pid")
bad=$(ss -Htuanp | grep -E "pid=($epid|$apid)," |
  awk '{ for (i = 5; i <= 6; i++)
    if ($i !~ /^(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]):/ && !(($2 == "LISTEN" || $2 == "UNCONN") && i == 6)) print }' ||
  true)
[ -z "$bad" ] || fail "non-loopback sockets: $bad"
say "ok: all sockets of etcd and kube-apiserver are on 127.0.0.1 ($(ss -Htuanp | grep -cE "pid=($epid|$apid),") sockets)"

sleep "${FERRY_KUBE_SMOKE_IDLE:-10}"
rss() { awk '/^VmRSS/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status"; }
say "idle RSS after ${FERRY_KUBE_SMOKE_IDLE:-10} s: etcd $(rss "$epid"), kube-apiserver $(rss "$apid")"

"$HERE/stop.sh" "$W"
"$HERE/stop.sh" "$W"
alive "$epid" etcd "$W" && fail "etcd still runs after stop.sh"
alive "$apid" kube-apiserver "$W" && fail "kube-apiserver still runs after stop.sh"
say "ok: stop.sh stops both and is safe to call twice"
say "PASS"
