// Package proctest is the multi-process tests of the stores that share
// buckets between processes: the test binary runs again as 4 processes
// of 8 goroutines admitting on one key for 3 seconds, and
// backendtest.Check judges their merged starts (Parent); or taking and
// releasing leases of one capped key, and one of them killed holding
// leases (Leases).
package proctest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

// Limit is the limit the processes share: 200/s with a quota that binds
// only in the first second (burst 10 + 200 > 205).
var Limit = bucket.PerSecond(200).WithBurst(10).WithQuota(205, time.Second)

// Config tells the parent how to start its children.
type Config struct {
	// Env names the environment variable that carries Orders to a child:
	// a test that finds it set calls Child instead of Parent.
	Env, Orders string
	// Now reads the server's clock.
	Now func() (time.Time, error)
}

// Parent runs 4 children (the test binary, running the test again with
// cfg.Env set), starts them together, and requires that their merged
// starts conform to Limit and reach at least 97% of its rate. A child
// prints "ready" once connected, reads "go UNTIL" on its stdin, admits
// until the server's clock reaches UNTIL (Unix ns), and prints "start AT
// COST" for each admission.
func Parent(t *testing.T, cfg Config) {
	t.Helper()
	if testing.Short() {
		t.Skip("takes 4 seconds")
	}

	const procs = 4
	children := startChildren(t, cfg, t.Name(), procs)
	now, err := cfg.Now()
	require.NoError(t, err, "the server's clock")
	const span = 3 * time.Second
	from, until := now.UnixNano(), now.Add(span).UnixNano()
	for _, ch := range children {
		fmt.Fprintf(ch.stdin, "go %d\n", until)
		ch.stdin.Close()
	}

	var starts []backendtest.Start
	for i, ch := range children {
		n, other := 0, ""
		for line := range ch.lines {
			var s backendtest.Start
			if _, err := fmt.Sscanf(line, "start %d %d", &s.At, &s.Cost); err == nil {
				starts = append(starts, s)
				n++
			} else {
				other += line + "\n"
			}
		}
		require.NoError(t, ch.cmd.Wait(), "process %d:\n%s%s", i, other, ch.out.String())
		require.NotZero(t, n, "process %d admissions:\n%s%s", i, other, ch.out.String())
	}
	require.NoError(t, backendtest.Check(Limit, starts), "%d processes on one key", procs)
	var units int64
	for _, s := range starts {
		if s.At >= from && s.At < until {
			units += s.Cost
		}
	}
	rate := float64(units) / span.Seconds()
	t.Logf("%d processes × 8 goroutines: %d admissions, %.1f/s over %v (limit %v)", procs, len(starts), rate, span, Limit)
	assert.GreaterOrEqual(t, rate, 0.97*200, "admissions per second of 200/s: want at least 97%")
}

// A child is a re-execution of the test binary, running one test with
// Config.Env set.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string  // its stdout, line by line, closed at its end
	out   bytes.Buffer // its stderr, for failures
}

// startChildren starts n children running the top-level test named test,
// and waits until each has printed "ready". They are killed, if still
// running, when t ends.
func startChildren(t *testing.T, cfg Config, test string, n int) []*child {
	t.Helper()
	children := make([]*child, n)
	for i := range children {
		ch := &child{lines: make(chan string, 1024)}
		ch.cmd = exec.Command(os.Args[0], "-test.run=^"+regexp.QuoteMeta(test)+"$", "-test.count=1")
		ch.cmd.Env = append(os.Environ(), cfg.Env+"="+cfg.Orders)
		ch.cmd.Stderr = &ch.out
		stdout, err := ch.cmd.StdoutPipe()
		require.NoError(t, err)
		ch.stdin, err = ch.cmd.StdinPipe()
		require.NoError(t, err)
		require.NoError(t, ch.cmd.Start())
		go func() {
			defer close(ch.lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				ch.lines <- sc.Text()
			}
		}()
		t.Cleanup(func() { ch.cmd.Process.Kill(); ch.cmd.Wait() })
		children[i] = ch
	}
	for i, ch := range children {
		if line, ok := <-ch.lines; !ok || line != "ready" {
			ch.cmd.Wait()
			require.FailNow(t, fmt.Sprintf("process %d did not get ready (%q)", i, line), ch.out.String())
		}
	}
	return children
}

// Child is the body of a child process, on s, a store of the storage its
// parent named in its orders, ready to admit: 8 goroutines admit on key
// until the time they are told, each sleeping until its admitted start,
// and print every start.
func Child(t *testing.T, s driver.Backend, key string) {
	fmt.Println("ready")
	var until int64
	_, err := fmt.Scanf("go %d\n", &until)
	require.NoError(t, err)
	var (
		mu  sync.Mutex
		out = bufio.NewWriter(os.Stdout)
		wg  sync.WaitGroup
	)
	defer out.Flush()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Booking up to 100ms ahead keeps the bucket busy through
			// scheduling stalls of the processes.
			req := driver.Request{Key: key, Limit: backendtest.Limit(Limit), Cost: 1, MaxWait: 100 * time.Millisecond}
			for {
				d, err := s.Admit(context.Background(), req)
				if !assert.NoError(t, err) {
					return
				}
				if d.Now >= until {
					return
				}
				if !d.Allowed {
					time.Sleep(min(d.Wait-req.MaxWait, 20*time.Millisecond))
					continue
				}
				mu.Lock()
				fmt.Fprintf(out, "start %d %d\n", d.Start(), req.Cost)
				mu.Unlock()
				time.Sleep(d.Wait)
			}
		}()
	}
	wg.Wait()
}
