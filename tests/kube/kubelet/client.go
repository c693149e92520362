package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
)

// execClient is `ferry-test-kubelet exec`: a pods/exec client with client-go's own executors,
// for scripts (tests/kube/smoke.sh) on a machine without kubectl. Like kubectl 1.30+, it speaks
// WebSocket v5.channel.k8s.io (which kube-apiserver translates to SPDY towards the kubelet);
// --spdy uses SPDY end to end instead (proxied by kube-apiserver as is). No stdin, no tty. It
// prints the command's stdout and stderr and exits with the command's exit code; 124 if
// --timeout ran out first (the client then closes the connection); 1 on any other error.
func execClient(args []string) int {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (required)")
	container := fs.String("container", "", "container (default: kube-apiserver picks the only one)")
	timeout := fs.Duration("timeout", 0, "give up (and close the connection) after this long")
	spdy := fs.Bool("spdy", false, "SPDY instead of WebSocket v5")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) > 2 && rest[2] == "--" {
		rest = append(rest[:2], rest[3:]...)
	}
	if *kubeconfig == "" || len(rest) < 3 {
		fmt.Fprintln(os.Stderr, "usage: ferry-test-kubelet exec --kubeconfig FILE [--container NAME] [--timeout D] [--spdy] NAMESPACE POD -- COMMAND [ARG...]")
		return 2
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "exec: kubeconfig: %v\n", err)
		return 1
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "exec: %v\n", err)
		return 1
	}
	u := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(rest[0]).Name(rest[1]).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: *container,
		Command:   rest[2:],
		Stdout:    true,
		Stderr:    true,
	}, scheme.ParameterCodec).URL()
	var ex remotecommand.Executor
	if *spdy {
		ex, err = remotecommand.NewSPDYExecutor(cfg, "POST", u)
	} else {
		ex, err = remotecommand.NewWebSocketExecutor(cfg, "GET", u.String())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "exec: %v\n", err)
		return 1
	}
	ctx := context.Background()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: os.Stdout, Stderr: os.Stderr})
	var exitErr utilexec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exitErr) && exitErr.Exited():
		return exitErr.ExitStatus()
	case ctx.Err() != nil:
		fmt.Fprintf(os.Stderr, "exec: gave up after %v\n", *timeout)
		return 124
	default:
		fmt.Fprintf(os.Stderr, "exec: %v\n", err)
		return 1
	}
}
