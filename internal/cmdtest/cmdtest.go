// Package cmdtest runs the module's commands (cmd/demo, cmd/soak) in their
// tests as a user would: built once, run as a process, their exit status
// and output checked.
package cmdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// Main builds the command in the test's directory as name into *bin, runs
// the tests under goleak, then removes the build and calls cleanup with
// the tests' exit code (nil: nothing). A TestMain calls it. The command is
// built without the race detector even under go test -race: the tests
// time it or measure it, as users run it, and an instrumented binary runs
// several times slower.
func Main(m *testing.M, name string, bin *string, cleanup func(code int)) {
	dir, err := os.MkdirTemp("", "leakybucket-"+name+"-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin = filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", *bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building %s: %v\n%s", name, err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		if cleanup != nil {
			cleanup(code)
		}
	}))
}

// A Run is what one run of a command printed and how it exited.
type Run struct {
	Name           string // the command's, as it prefixes its errors
	Args           []string
	Stdout, Stderr string
	Code           int // exit status
}

// Exec runs bin with args and waits for it to exit, killing it after
// timeout. It fails t if bin could not run.
func Exec(t testing.TB, timeout time.Duration, bin string, args ...string) Run {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := Run{Name: filepath.Base(bin), Args: args, Stdout: stdout.String(), Stderr: stderr.String()}
	if exit := (*exec.ExitError)(nil); errors.As(err, &exit) {
		r.Code = exit.ExitCode()
	} else {
		require.NoError(t, err, "%s", r)
	}
	return r
}

// String returns the command line of r.
func (r Run) String() string {
	return strings.Join(append([]string{r.Name}, r.Args...), " ")
}

// CheckUsageError checks that r exited with code, with nothing on stdout
// and one line on stderr, "name: …", that contains want.
func CheckUsageError(t testing.TB, r Run, code int, want string) {
	t.Helper()
	line := strings.TrimSuffix(r.Stderr, "\n")
	assert.Equal(t, code, r.Code, "%s: exit status (stderr %q)", r, r.Stderr)
	assert.Empty(t, r.Stdout, "%s: stdout", r)
	assert.NotContains(t, line, "\n", "%s: stderr, want one line", r)
	assert.True(t, strings.HasPrefix(line, r.Name+": "), "%s: stderr %q, want it to start with %q", r, line, r.Name+": ")
	assert.Contains(t, line, want, "%s: stderr", r)
}
