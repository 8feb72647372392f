package cmdflag

import (
	"bytes"
	"flag"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type flags struct {
	kind, sqlite, redis, postgres string
	n                             int
}

func parse(args ...string) (*flags, map[string]bool, string, error) {
	f := &flags{n: 4}
	fs := flag.NewFlagSet("cmd", flag.ContinueOnError)
	BackendFlags(fs, &f.kind, &f.sqlite, &f.redis, &f.postgres)
	fs.Var((*Int)(&f.n), "n", "`N` things")
	var stdout bytes.Buffer
	set, err := Parse(fs, args, func(fs *flag.FlagSet, w io.Writer) { io.WriteString(w, "usage\n") }, &stdout)
	return f, set, stdout.String(), err
}

func TestParse(t *testing.T) {
	f, set, stdout, err := parse("-backend", "redis", "-redis", "localhost", "-n", "7")
	require.NoError(t, err)
	assert.Equal(t, &flags{kind: "redis", redis: "localhost", postgres: DefaultPostgresURL, n: 7}, f)
	assert.Equal(t, map[string]bool{"backend": true, "redis": true, "n": true}, set)
	assert.Empty(t, stdout)

	_, _, stdout, err = parse("-help")
	assert.ErrorIs(t, err, flag.ErrHelp)
	assert.Equal(t, "usage\n", stdout, "-help writes the usage to stdout")

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-n", "many"}, `invalid value "many" for flag -n: want a whole number (run cmd -help for the flags)`},
		{[]string{"-m"}, "flag provided but not defined: -m (run cmd -help for the flags)"},
		{[]string{"extra"}, `unexpected argument "extra": cmd takes flags only (run cmd -help)`},
		{[]string{"-backend", "mysql"}, `-backend "mysql": want memory, sqlite, redis or postgres`},
		{[]string{"-sqlite", "b.db"}, "-sqlite applies only with -backend sqlite (this run uses -backend memory)"},
		{[]string{"-backend", "sqlite", "-redis", "localhost"}, "-redis applies only with -backend redis (this run uses -backend sqlite)"},
		{[]string{"-backend", "redis", "-redis", "redis://[::1"}, `-redis "redis://[::1": `},
		{[]string{"-backend", "redis", "-redis", "a/b"}, `-redis "a/b": want host:port or a redis:// URL`},
		{[]string{"-backend", "postgres", "-postgres", "postgres://[::1"}, "-postgres: "},
	} {
		_, _, _, err := parse(tt.args...)
		require.Error(t, err, "%v", tt.args)
		assert.Contains(t, err.Error(), tt.want, "%v", tt.args)
		assert.NotContains(t, err.Error(), "\n", "%v: one line", tt.args)
	}
}

func TestRedisOptions(t *testing.T) {
	for addr, want := range map[string]string{
		"localhost":           "localhost:6379",
		"10.0.0.1:7000":       "10.0.0.1:7000",
		"::1":                 "[::1]:6379",
		"[::1]:7000":          "[::1]:7000",
		"redis://host:7001/0": "host:7001",
	} {
		o, err := RedisOptions(addr)
		require.NoError(t, err, addr)
		assert.Equal(t, want, o.Addr, addr)
	}
	_, err := RedisOptions("")
	assert.Error(t, err, "an empty address")
}
