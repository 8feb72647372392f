package pgstore_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/leakybucket/leakybucket/backend/backendtest"
	"github.com/leakybucket/leakybucket/backend/pgstore"
	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/pgtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// childEnv carries a child's orders (JSON) when TestMultiProcess re-executes
// the test binary. The child then prints "ready" once connected, reads
// "go UNTIL" on its stdin, admits until the database's clock reaches UNTIL (Unix
// ns), and prints "start AT COST" for each admission.
const childEnv = "PGSTORE_TEST_CHILD"

type childOrders struct {
	URL, Schema, Key string
}

// processLimit is the limit the processes share: 200/s with a quota that
// binds only in the first second (burst 10 + 200 > 205).
var processLimit = bucket.PerSecond(200).WithBurst(10).WithQuota(205, time.Second)

// TestMultiProcess runs 4 processes of 8 goroutines each on one key for 3
// seconds; their merged starts must conform to the limit and reach at
// least 97% of its rate.
func TestMultiProcess(t *testing.T) {
	if orders := os.Getenv(childEnv); orders != "" {
		runChild(t, orders)
		return
	}
	if testing.Short() {
		t.Skip("takes 4 seconds")
	}
	url := pgtest.URL(t)
	pool := pgtest.Pool(t, url)
	ctx := context.Background()
	orders, _ := json.Marshal(childOrders{URL: url, Schema: pgtest.Schema(t, url), Key: "one-key"})

	const procs = 4
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		lines chan string
		out   bytes.Buffer // its stderr, for failures
	}
	children := make([]*child, procs)
	for i := range children {
		ch := &child{lines: make(chan string, 1024)}
		ch.cmd = exec.Command(os.Args[0], "-test.run=^TestMultiProcess$", "-test.count=1")
		ch.cmd.Env = append(os.Environ(), childEnv+"="+string(orders))
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
	var now time.Time
	require.NoError(t, pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&now))
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
	require.NoError(t, backendtest.Check(processLimit, starts), "%d processes on one key", procs)
	var units int64
	for _, s := range starts {
		if s.At >= from && s.At < until {
			units += s.Cost
		}
	}
	rate := float64(units) / span.Seconds()
	t.Logf("%d processes × 8 goroutines: %d admissions, %.1f/s over %v (limit %v)", procs, len(starts), rate, span, processLimit)
	assert.GreaterOrEqual(t, rate, 0.97*200, "admissions per second of 200/s: want at least 97%")
}

// runChild is a child process of TestMultiProcess: 8 goroutines admit on
// one key until the time it is told, each sleeping until its admitted
// start, and print every start.
func runChild(t *testing.T, ordersJSON string) {
	var o childOrders
	require.NoError(t, json.Unmarshal([]byte(ordersJSON), &o))
	pool, err := pgxpool.New(context.Background(), o.URL)
	require.NoError(t, err)
	defer pool.Close()
	s, err := pgstore.New(pool, pgstore.Options{Schema: o.Schema})
	require.NoError(t, err)
	defer s.Close()
	// The schema exists before the start: processes install it at once.
	_, err = s.Admit(context.Background(), driver.Request{Key: "warm-up", Limit: backendtest.Limit(processLimit), Cost: 1})
	require.NoError(t, err)
	fmt.Println("ready")
	var until int64
	_, err = fmt.Scanf("go %d\n", &until)
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
			req := driver.Request{Key: o.Key, Limit: backendtest.Limit(processLimit), Cost: 1, MaxWait: 100 * time.Millisecond}
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
