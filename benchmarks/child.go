package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// Some comparisons run in child processes: several processes sharing one
// SQLite file or one key's cap in Redis, and a process stopped with
// SIGSTOP. The children are this
// program again, run with the hidden flag -child.
var (
	childRole string
	childPath string
)

func childFlags() {
	flag.StringVar(&childRole, "child", "", "internal: run as a child process in this role")
	flag.StringVar(&childPath, "child-path", "", "internal: the child's database file")
}

func isChild() bool { return childRole != "" }

func runChild() {
	var err error
	switch childRole {
	case "sqlite":
		err = sqliteChild(childPath, os.Stdin, os.Stdout)
	case "postgres":
		err = postgresChild(childPath, postgresSchema(os.Getppid()), os.Stdin, os.Stdout)
	case "inflight-redis":
		err = inflightRedisChild(childPath, os.Stdin, os.Stdout)
	case "learn":
		err = learnChild(childPath, os.Stdin, os.Stdout)
	case "stall-ours", "stall-anchor":
		err = stallChild(childRole == "stall-ours", os.Stdin, os.Stdout)
	default:
		err = fmt.Errorf("unknown child role %q", childRole)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
}

// A child is a running child process, spoken to by lines on its stdin and
// stdout.
type child struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	stderr strings.Builder
}

func startChild(args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	c := &child{cmd: exec.Command(exe, args...)}
	c.cmd.Stderr = &c.stderr
	if c.in, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c.out = bufio.NewScanner(out)
	c.out.Buffer(nil, 64<<20)
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	return c, nil
}

// say sends a line to the child.
func (c *child) say(format string, args ...any) {
	fmt.Fprintf(c.in, format+"\n", args...)
}

// line reads the child's next line, panicking with its stderr if it died.
func (c *child) line() string {
	if !c.out.Scan() {
		c.cmd.Wait()
		panic(fmt.Sprintf("child %v ended: %v\n%s", c.cmd.Args, c.out.Err(), c.stderr.String()))
	}
	return c.out.Text()
}

// stop closes the child's stdin, which ends it, and waits for it.
func (c *child) stop() {
	c.in.Close()
	if err := c.cmd.Wait(); err != nil {
		fmt.Fprintf(os.Stderr, "child %v: %v\n%s", c.cmd.Args, err, c.stderr.String())
	}
}

// startChildren starts n children with args and waits until each has
// said "ready", panicking with its stderr if one says anything else; stop
// ends them all.
func startChildren(n int, args ...string) (children []*child, stop func()) {
	stop = func() {
		for _, c := range children {
			c.stop()
		}
	}
	for range n {
		c, err := startChild(args...)
		if err != nil {
			stop()
			panic(err)
		}
		children = append(children, c)
	}
	for _, c := range children {
		if l := c.line(); l != "ready" {
			stop()
			panic(fmt.Sprintf("child said %q\n%s", l, c.stderr.String()))
		}
	}
	return children, stop
}
