// Command soak runs a leakybucket Dispatcher at full speed against one
// backend for a long time, with keys that come and go, and fails if the
// process or the backend keeps growing after a warm-up: the Go heap,
// goroutines, open files, resident memory, and the backend's file, rows,
// keys or tables.
//
//	go run ./cmd/soak                                   memory, 60 s
//	go run ./cmd/soak -backend sqlite -duration 30m -plot soak.svg -out soak.jsonl
//
// Run it with -help for the flags; docs/guarantees.md ("Soak") says what
// it judges and how.
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
	exitFailed      = 1   // a resource grew, a job was lost or failed, or the shutdown was not clean
	exitUsage       = 2   // bad flags or an unreachable backend: nothing ran
	exitInterrupted = 130 // SIGINT or SIGTERM: the report so far is printed
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
		fmt.Fprintf(stderr, "soak: %v\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second Ctrl-C, while the run shuts down, ends the process.
	defer context.AfterFunc(ctx, stop)()
	return runSoak(ctx, cfg, stdout, stderr)
}
