// Command ferry-test-kubelet is a test stand-in for the kubelet's exec endpoint. It makes
// pods/exec work through a real kube-apiserver on a machine with no kubelet and no container
// runtime: the command runs as a plain process on this host.
//
//	ferry-test-kubelet --kubeconfig FILE --node NAME [--listen 127.0.0.1:0] [--ready-file FILE]
//	                   [--client-ca FILE]
//	ferry-test-kubelet --version
//	ferry-test-kubelet exec --kubeconfig FILE [--container NAME] [--timeout D] [--spdy]
//	                   NAMESPACE POD -- COMMAND [ARG...]        (a pods/exec client; client.go)
//
//	--kubeconfig FILE  credentials to create the Node and write its status (the admin
//	                   kubeconfig of tests/kube/start.sh)
//	--node NAME        the Node to create if missing and to mark Ready
//	--listen ADDR      where to serve HTTPS (default 127.0.0.1:0: a free port)
//	--ready-file FILE  written (atomically) with the port and a newline once the server accepts
//	                   connections and the Node's status names that port
//	--client-ca FILE   if set, require a client certificate signed by this CA (start.sh gives
//	                   kube-apiserver a client certificate signed by FERRY_KUBE_CA); default:
//	                   accept any client
//
// At start it:
//   - serves HTTPS (HTTP/1.1) with a self-signed certificate made at start (IP:127.0.0.1,
//     DNS:localhost). kube-apiserver started without --kubelet-certificate-authority does not
//     verify kubelet certificates (k8s.io/kubernetes/pkg/kubelet/client: no CA, TLS.Insecure);
//   - creates Node NAME if missing (labels kubernetes.io/hostname=NAME, kubernetes.io/os,
//     kubernetes.io/arch), then writes its status (status subresource): addresses InternalIP
//     127.0.0.1 and Hostname localhost, daemonEndpoints.kubeletEndpoint.Port = the port,
//     condition Ready=True, nodeInfo (kubeletVersion, os, arch). Nothing refreshes the
//     heartbeat afterwards (the test cluster has no node lifecycle controller), and the Node
//     is left as it is on exit.
//
// It serves:
//   - GET|POST /exec/{namespace}/{pod}/{container} and /exec/{namespace}/{pod}/{uid}/{container}
//     with the query parameters kube-apiserver forwards (command, repeated; stdin, stdout,
//     stderr, tty = "1"), through k8s.io/kubelet/pkg/cri/streaming/remotecommand.ServeExec, the
//     kubelet's own server code, with the CRI streaming server's defaults: SPDY remotecommand
//     v4/v3/v2/v1, and WebSocket (v4.)(base64.)channel.k8s.io. kube-apiserver 1.34 translates
//     a client's WebSocket v5.channel.k8s.io (kubectl, kube-rs) into SPDY v4 towards the
//     kubelet (feature gate TranslateStreamCloseWebsocketRequests, on by default); SPDY and
//     older WebSocket clients are proxied as they are;
//   - GET /healthz: "ok" (also reachable as /api/v1/nodes/NAME/proxy/healthz).
//
// An exec runs argv as given (no shell; argv[0] looked up in PATH) in this process's working
// directory, with this process's environment plus FERRY_POD_NAMESPACE, FERRY_POD_NAME and
// FERRY_CONTAINER, in a process group of its own; stdin, stdout and stderr are streamed. The
// result is reported as the kubelet reports it: exit 0 is a Success status; a non-zero exit is
// a Failure status with reason NonZeroExitCode and a cause {reason: ExitCode, message: "N"}; a
// process killed by signal S counts as exit code 128+S (as container runtimes report it); a
// command that cannot start (not found, not executable) is an InternalError status, as with a
// real runtime. tty=1 is refused (HTTP 400): there is no terminal. Pods are not looked at:
// kube-apiserver has already checked that the container is in the pod's spec and found this
// node through the pod's spec.nodeName; the pod's phase does not matter.
//
// When the connection from kube-apiserver ends before the command did (the client closed its
// connection, or timed out), the command's whole process group is killed with SIGKILL, so a
// test leaves no processes behind. kube-apiserver 1.34 closes that connection at once when the
// client's connection closes, translated (WebSocket v5) or not.
//
// SIGTERM or SIGINT: stop accepting, kill the process group of every running exec, exit 0.
// The log (stderr) has one line per exec start and end.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/util/retry"
	remotecommandserver "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// What the kubelet's CRI streaming server uses (k8s.io/kubelet/pkg/cri/streaming.DefaultConfig).
const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = remotecommandconsts.DefaultStreamCreationTimeout
	kubeletVersion        = "v1.34.10"
)

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("ferry-test-kubelet: ")
	if len(os.Args) > 1 && os.Args[1] == "exec" {
		os.Exit(execClient(os.Args[2:]))
	}
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig to create the Node and write its status (required)")
	node := flag.String("node", "", "name of the Node to serve (required)")
	listen := flag.String("listen", "127.0.0.1:0", "address to serve HTTPS on")
	readyFile := flag.String("ready-file", "", "file to write the port to once serving")
	clientCA := flag.String("client-ca", "", "require client certificates signed by this CA")
	version := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *version {
		fmt.Println("ferry-test-kubelet " + kubeletVersion)
		return
	}
	if *kubeconfig == "" || *node == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: ferry-test-kubelet --kubeconfig FILE --node NAME [--listen 127.0.0.1:0] [--ready-file FILE] [--client-ca FILE]\n"+
			"       ferry-test-kubelet exec --kubeconfig FILE [--container NAME] [--timeout D] [--spdy] NAMESPACE POD -- COMMAND [ARG...]")
		os.Exit(2)
	}
	if err := run(*kubeconfig, *node, *listen, *readyFile, *clientCA); err != nil {
		log.Printf("error: %v", err)
		os.Exit(1)
	}
}

func run(kubeconfig, node, listen, readyFile, clientCA string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.UserAgent = "ferry-test-kubelet"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}

	tlsConfig, err := serverTLS(clientCA)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port

	k := &kubelet{procs: map[int]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/exec/", k.serveExec)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 30 * time.Second,
		// HTTP/1.1 only: connection upgrades (SPDY, WebSocket) do not exist in HTTP/2.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.Default(),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(tls.NewListener(ln, tlsConfig)) }()

	if err := registerNode(ctx, client, node, int32(port)); err != nil {
		ln.Close()
		return fmt.Errorf("node %s: %w", node, err)
	}
	if readyFile != "" {
		if err := os.WriteFile(readyFile+".tmp", []byte(strconv.Itoa(port)+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(readyFile+".tmp", readyFile); err != nil {
			return err
		}
	}
	log.Printf("node %s ready: serving exec on https://%s (pid %d)", node, ln.Addr(), os.Getpid())

	select {
	case <-ctx.Done():
	case err := <-served:
		k.killAll("server stopped")
		return fmt.Errorf("serving: %w", err)
	}
	log.Printf("signal received: stopping")
	// Shutdown does not wait for hijacked (upgraded) connections; their commands are killed
	// here and the connections go when the process exits.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	k.killAll("kubelet stopping")
	// Let the killed commands' exec handlers report the exit (137) to their clients.
	done := make(chan struct{})
	go func() { k.active.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		log.Printf("exec connections still open after 3 s: leaving them")
	}
	log.Printf("stopped")
	return nil
}

// serverTLS is a TLS config with a fresh self-signed certificate for 127.0.0.1 and localhost;
// with clientCA, clients must present a certificate that CA signed.
func serverTLS(clientCA string) (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "ferry-test-kubelet"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"},
	}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", clientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// registerNode creates the Node if missing and writes the status a kubelet would: where to
// reach it, and Ready.
func registerNode(ctx context.Context, client kubernetes.Interface, name string, port int32) error {
	nodes := client.CoreV1().Nodes()
	_, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name,
		Labels: map[string]string{
			"kubernetes.io/hostname": name,
			"kubernetes.io/os":       "linux",
			"kubernetes.io/arch":     goruntime.GOARCH,
		},
	}}, metav1.CreateOptions{FieldManager: "ferry-test-kubelet"})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create: %w", err)
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		n.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: corev1.NodeHostName, Address: "localhost"},
		}
		n.Status.DaemonEndpoints.KubeletEndpoint.Port = port
		ready := corev1.NodeCondition{
			Type:               corev1.NodeReady,
			Status:             corev1.ConditionTrue,
			Reason:             "KubeletReady",
			Message:            "ferry-test-kubelet is serving exec",
			LastHeartbeatTime:  now,
			LastTransitionTime: now,
		}
		found := false
		for i, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					ready.LastTransitionTime = c.LastTransitionTime
				}
				n.Status.Conditions[i] = ready
				found = true
			}
		}
		if !found {
			n.Status.Conditions = append(n.Status.Conditions, ready)
		}
		n.Status.NodeInfo.KubeletVersion = kubeletVersion
		n.Status.NodeInfo.OperatingSystem = "linux"
		n.Status.NodeInfo.Architecture = goruntime.GOARCH
		_, err = nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{FieldManager: "ferry-test-kubelet"})
		return err
	})
}

type kubelet struct {
	mu     sync.Mutex
	procs  map[int]string // process group id -> description, of the running execs
	seq    atomic.Uint64
	active sync.WaitGroup // exec handlers running
}

func (k *kubelet) killAll(why string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for pgid, what := range k.procs {
		log.Printf("%s: killing process group %d (%s)", why, pgid, what)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

func (k *kubelet) serveExec(w http.ResponseWriter, req *http.Request) {
	k.active.Add(1)
	defer k.active.Done()
	if req.Method != http.MethodGet && req.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	// /exec/{namespace}/{pod}/{container} or /exec/{namespace}/{pod}/{uid}/{container}
	parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/exec/"), "/")
	if len(parts) != 3 && len(parts) != 4 {
		http.NotFound(w, req)
		return
	}
	for _, p := range parts {
		if p == "" {
			http.NotFound(w, req)
			return
		}
	}
	e := &execution{
		k:         k,
		id:        k.seq.Add(1),
		namespace: parts[0],
		pod:       parts[1],
		container: parts[len(parts)-1],
	}
	opts, err := remotecommandserver.NewOptions(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if opts.TTY {
		http.Error(w, "ferry-test-kubelet: tty is not supported", http.StatusBadRequest)
		return
	}
	cmd := req.URL.Query()[corev1.ExecCommandParam]
	if wsstream.IsWebSocketRequest(req) {
		e.via = "WebSocket " + strings.Join(req.Header.Values("Sec-Websocket-Protocol"), ",")
	} else {
		e.via = "SPDY " + strings.Join(req.Header.Values(httpstream.HeaderProtocolVersion), ",")
	}

	// The connection is hijacked for SPDY/WebSocket; after that net/http no longer notices the
	// peer leaving, so the hijacked connection itself cancels the context the command runs
	// under when a read from it fails (peer closed, or reset) or when it is closed.
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	hw := &hijackWatcher{ResponseWriter: w, gone: cancel}
	remotecommandserver.ServeExec(hw, req.WithContext(ctx), e, e.pod, types.UID(""), e.container, cmd,
		opts, streamIdleTimeout, streamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

// execution is one exec request; it implements remotecommandserver.Executor.
type execution struct {
	k                         *kubelet
	id                        uint64
	namespace, pod, container string
	via                       string // the transport and the protocols the client offered
}

func (e *execution) ExecInContainer(ctx context.Context, _ string, _ types.UID, _ string, argv []string,
	in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	where := fmt.Sprintf("exec #%d %s/%s/%s %q", e.id, e.namespace, e.pod, e.container, argv)
	if len(argv) == 0 {
		log.Printf("%s: no command", where)
		return errors.New("no command given")
	}
	if resize != nil {
		go func() {
			for range resize {
			}
		}()
	}
	c := exec.Command(argv[0], argv[1:]...)
	c.Env = append(os.Environ(),
		"FERRY_POD_NAMESPACE="+e.namespace,
		"FERRY_POD_NAME="+e.pod,
		"FERRY_CONTAINER="+e.container,
	)
	// A process group of its own, to kill the command and whatever it started; and SIGKILL if
	// this process dies first.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// out and errOut: os/exec copies from pipes into them and Wait waits for that copying, so
	// no output is lost. stdin: copied here, not by os/exec, as Wait would otherwise wait for a
	// client that never sends EOF.
	if out != nil {
		c.Stdout = out
	}
	if errOut != nil {
		c.Stderr = errOut
	}
	var stdin io.WriteCloser
	if in != nil {
		var err error
		if stdin, err = c.StdinPipe(); err != nil {
			return err
		}
	}
	start := time.Now()
	if err := c.Start(); err != nil {
		log.Printf("%s: cannot start: %v", where, err)
		return fmt.Errorf("cannot start %q: %w", argv, err)
	}
	pgid := c.Process.Pid
	e.k.mu.Lock()
	e.k.procs[pgid] = where
	e.k.mu.Unlock()
	defer func() {
		e.k.mu.Lock()
		delete(e.k.procs, pgid)
		e.k.mu.Unlock()
	}()
	log.Printf("%s: started, pid %d, via %s", where, pgid, e.via)
	if stdin != nil {
		go func() {
			_, _ = io.Copy(stdin, in)
			stdin.Close()
		}()
	}

	waited := make(chan error, 1)
	go func() { waited <- c.Wait() }()
	var err error
	select {
	case err = <-waited:
	case <-ctx.Done():
		log.Printf("%s: connection gone, killing process group %d", where, pgid)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-waited
	}
	took := time.Since(start).Round(time.Millisecond)
	if err == nil {
		log.Printf("%s: exit code 0 (%v)", where, took)
		return nil
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code := exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		log.Printf("%s: exit code %d, %v (%v)", where, code, exitErr.ProcessState, took)
		// The message containerd gives (kubectl shows "command terminated with non-zero exit
		// code: error executing command [...], exit code N").
		return utilexec.CodeExitError{
			Err:  fmt.Errorf("error executing command %v, exit code %d", argv, code),
			Code: code,
		}
	}
	log.Printf("%s: %v (%v)", where, err, took)
	return err
}

// hijackWatcher passes Hijack through, wrapping the connection so that its end is noticed.
// It deliberately has no Unwrap method: the WebSocket code looks for the original
// ResponseWriter through Unwrap (k8s.io/apiserver/pkg/endpoints/responsewriter.GetOriginal).
type hijackWatcher struct {
	http.ResponseWriter
	gone func()
}

func (h *hijackWatcher) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	// Reads go through rw.Reader, which may hold bytes already read from conn.
	wc := &watchedConn{Conn: conn, r: rw.Reader, gone: h.gone}
	return wc, bufio.NewReadWriter(bufio.NewReader(wc), rw.Writer), nil
}

type watchedConn struct {
	net.Conn
	r    *bufio.Reader
	gone func()
}

func (c *watchedConn) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if err != nil {
		c.gone()
	}
	return n, err
}

func (c *watchedConn) Close() error {
	c.gone()
	return c.Conn.Close()
}
