// Command demo syncs items for several tenants from a rate-limited API
// through a leakybucket Dispatcher keyed by tenant, and shows that the API
// saw every tenant at its limit and never had to answer 429. With no flags
// it needs no service: a mock API on loopback, the memory backend.
//
//	go run ./cmd/demo
//	go run ./cmd/demo -backend sqlite -procs 3
//	go run ./cmd/demo -backend redis -procs 2 -json
//
// Run it with -help for the flags (SPEC §7: scripts rely on them).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit statuses.
const (
	exitOK          = 0
	exitFailed      = 1   // a job finally failed
	exitUsage       = 2   // bad flags, unreachable backend, nothing run
	exitInterrupted = 130 // SIGINT or SIGTERM: what was done is summarised
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if w, ok, err := workerRole(); ok || err != nil {
		if err != nil {
			fmt.Fprintf(stderr, "demo: %v\n", err)
			return exitUsage
		}
		return runWorker(ctx, cfg, w, stdout)
	}
	return runParent(ctx, cfg, stdout, stderr)
}
