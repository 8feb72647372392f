package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// anchors are the modules compared with, whose versions the run reports.
var anchors = []string{
	"golang.org/x/time",
	"go.uber.org/ratelimit",
	"github.com/alitto/pond/v2",
	"github.com/panjf2000/ants/v2",
	"golang.org/x/sync",
	"github.com/go-redis/redis_rate/v10",
	"github.com/redis/go-redis/v9",
	"modernc.org/sqlite",
	"gonum.org/v1/plot",
	"github.com/aws/aws-sdk-go-v2",
}

// printMachine writes what the figures depend on: the machine, its load,
// Go and the versions of the libraries compared.
func printMachine(w io.Writer) {
	fmt.Fprintf(w, "machine: %d CPUs (GOMAXPROCS %d), %s, %s memory\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), cpuModel(), memTotal())
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(w, "load average at start: %s\n", strings.Join(strings.Fields(string(load))[:3], " "))
	}
	fmt.Fprintf(w, "go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if bi, ok := debug.ReadBuildInfo(); ok {
		vs := map[string]string{}
		for _, d := range bi.Deps {
			v := d.Version
			if d.Replace != nil {
				v = d.Replace.Version
			}
			vs[d.Path] = v
		}
		var parts []string
		for _, a := range anchors {
			if v, ok := vs[a]; ok {
				parts = append(parts, a+" "+v)
			}
		}
		fmt.Fprintf(w, "libraries: %s\n", strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "timers: a 100µs timer fires %v late (median of 50), a 1ms timer %v late\n", timerLate(100*time.Microsecond), timerLate(time.Millisecond))
	if addr, note := redisAddr(); addr != "" {
		fmt.Fprintf(w, "redis: %s (%s)\n", addr, note)
	}
}

func cpuModel() string {
	return procLine("/proc/cpuinfo", "unknown CPU", func(line string) (string, bool) {
		k, v, ok := strings.Cut(line, ":")
		return strings.TrimSpace(v), ok && strings.TrimSpace(k) == "model name"
	})
}

func memTotal() string {
	return procLine("/proc/meminfo", "unknown", func(line string) (string, bool) {
		var kb int64
		_, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb)
		return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20)), err == nil
	})
}

// procLine returns what match makes of the first line of the file at path
// that it accepts, or otherwise if there is none.
func procLine(path, otherwise string, match func(line string) (string, bool)) string {
	f, err := os.Open(path)
	if err != nil {
		return otherwise
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := match(sc.Text()); ok {
			return v
		}
	}
	return otherwise
}

// timerLate returns how late a timer of d fires, the median of 50, on an
// otherwise idle process: what pacing by sleeping is up against.
func timerLate(d time.Duration) time.Duration {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	lat := make([]time.Duration, 50)
	for i := range lat {
		t0 := time.Now()
		t.Reset(d)
		<-t.C
		lat[i] = time.Since(t0) - d
	}
	slices.Sort(lat)
	return lat[len(lat)/2].Round(time.Microsecond)
}
