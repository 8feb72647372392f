package dispatcher_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKeyTypeChecked: a key or cost function of the wrong type is a
// compile error, not a run-time one. testdata/keytype compiles with a key
// function that returns a string, and fails, naming that function's type,
// with one that returns an int (build tag wrongkey) and with a cost
// function of another job type (build tag wrongjob).
func TestKeyTypeChecked(t *testing.T) {
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); runtime.GOROOT() == "" || err != nil {
		t.Skipf("no go command at GOROOT/bin: %v", err)
	}
	build := func(tags string) (string, error) {
		out, err := exec.Command(gobin, "build", "-tags", tags, "./testdata/keytype").CombinedOutput()
		return string(out), err
	}
	out, err := build("")
	require.NoError(t, err, "go build with a string key:\n%s", out)
	out, err = build("wrongkey")
	require.Error(t, err, "go build with an int key")
	assert.Contains(t, out, "func(j job) int", "the compiler's error names the key function's type")
	assert.Contains(t, out, "func(T) string", "the compiler's error names the type New wants")
	out, err = build("wrongjob")
	require.Error(t, err, "go build with a cost function of strings")
	assert.Contains(t, out, "func(s string) int", "the compiler's error names the cost function's type")
}
