package redistest

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A Cluster is a Redis Cluster of redis-server processes started by this
// package: its masters and, if asked for, their replicas.
type Cluster struct {
	// Servers are the cluster's processes, the masters as created first,
	// then the replicas. A failover changes their roles: Nodes says what
	// they are now.
	Servers []*Server

	ids       map[*Server]string // node IDs
	replicaOf map[string]string  // a replica's master's ID, by ID, as made
}

// ClusterOptions says what cluster StartClusterWith starts.
type ClusterOptions struct {
	// Masters is how many masters share the slots: at least 3. Default 3.
	Masters int
	// Replicas is how many replicas each master has. Default 0.
	Replicas int
	// NodeTimeout is cluster-node-timeout: how long a node may go
	// unanswered before the others count it failed, and a failed
	// master's replica takes its place. Default 5s.
	NodeTimeout time.Duration
	// FullCoverage sets cluster-require-full-coverage to yes, Redis's
	// default: while a master is failed and not yet replaced, every node
	// refuses every command (CLUSTERDOWN). Without it (no, as
	// docs/redis.md advises) the other masters serve their slots.
	FullCoverage bool
}

// StartCluster starts a Redis Cluster of t's own with the given number of
// masters (at least 3) and no replicas; see StartClusterWith.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	return StartClusterWith(t, ClusterOptions{Masters: masters})
}

// StartClusterWith starts a Redis Cluster of t's own as opts says, on
// free loopback ports, stopped when t ends. It returns once every node
// counts the cluster ok and every replica is in sync with its master. It
// skips t if redis-server or redis-cli is not on PATH (or fails it, see
// EnvRequire), and fails it if the cluster does not form.
func StartClusterWith(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		unavailable(t, err)
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		unavailable(t, err)
	}
	c, err := startCluster(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	return c
}

// Addrs returns the addresses of the cluster's servers, for a client's
// seeds: without replicas, the masters'.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		addrs[i] = s.Addr()
	}
	return addrs
}

func (c *Cluster) stop() {
	for _, s := range c.Servers {
		s.stop()
	}
}

func startCluster(dir string, opts ClusterOptions) (*Cluster, error) {
	switch {
	case opts.Masters == 0:
		opts.Masters = 3
	case opts.Masters < 3:
		return nil, fmt.Errorf("redistest: a cluster needs 3 masters or more, not %d", opts.Masters)
	}
	if opts.Replicas < 0 {
		return nil, fmt.Errorf("redistest: %d replicas per master", opts.Replicas)
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = 5 * time.Second
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		return nil, err
	}
	coverage := "no"
	if opts.FullCoverage {
		coverage = "yes"
	}
	conf := []string{
		"--cluster-node-timeout", strconv.FormatInt(opts.NodeTimeout.Milliseconds(), 10),
		"--cluster-require-full-coverage", coverage,
		// A replica's first sync starts at once, not after the 5 s Redis
		// waits by default for more replicas to share it.
		"--repl-diskless-sync-delay", "0",
	}
	c := &Cluster{ids: make(map[*Server]string), replicaOf: make(map[string]string)}
	for range opts.Masters * (1 + opts.Replicas) {
		s, err := start(dir, true, conf)
		if err != nil {
			c.stop()
			return nil, err
		}
		c.Servers = append(c.Servers, s)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(opts.Replicas), "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		c.stop()
		return nil, fmt.Errorf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.ready(opts, 30*time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// ready waits until every node counts the cluster ok and sees every
// other node in its role, and every replica is in sync; then it orders
// c.Servers masters first and records the node IDs.
func (c *Cluster) ready(opts ClusterOptions, timeout time.Duration) error {
	total := len(c.Servers)
	replicas := opts.Masters * opts.Replicas
	deadline := time.Now().Add(timeout)
	for _, s := range c.Servers {
		for {
			err := func() error {
				info, err := Do(s.Addr(), "CLUSTER", "INFO")
				if err != nil {
					return err
				}
				if !strings.Contains(info, "cluster_state:ok") ||
					!strings.Contains(info, "cluster_slots_ok:16384") ||
					!strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(total)+"\r") {
					return fmt.Errorf("CLUSTER INFO:\n%s", info)
				}
				nodes, err := nodesAt(s.Addr())
				if err != nil {
					return err
				}
				if n := countReplicas(nodes); n != replicas {
					return fmt.Errorf("%d replicas known, want %d", n, replicas)
				}
				me := slices.IndexFunc(nodes, func(n Node) bool { return n.Addr == s.Addr() })
				if me < 0 {
					return errors.New("CLUSTER NODES does not name the node itself")
				}
				if nodes[me].Master {
					return nil
				}
				repl, err := Do(s.Addr(), "INFO", "replication")
				if err != nil {
					return err
				}
				if !strings.Contains(repl, "master_link_status:up") {
					return errors.New("replica not in sync")
				}
				return nil
			}()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("redistest: cluster not ready after %v at %s: %v", timeout, s.Addr(), err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	nodes, err := nodesAt(c.Servers[0].Addr())
	if err != nil {
		return err
	}
	master := make(map[*Server]bool)
	for _, n := range nodes {
		if n.MasterID != "" {
			c.replicaOf[n.ID] = n.MasterID
		}
		if s := c.Server(n.Addr); s != nil {
			c.ids[s], master[s] = n.ID, n.Master
		}
	}
	if len(c.ids) != total {
		return fmt.Errorf("redistest: CLUSTER NODES names %d of the %d servers", len(c.ids), total)
	}
	slices.SortStableFunc(c.Servers, func(a, b *Server) int {
		switch {
		case master[a] && !master[b]:
			return -1
		case master[b] && !master[a]:
			return 1
		}
		return 0
	})
	return nil
}

func countReplicas(nodes []Node) int {
	n := 0
	for _, node := range nodes {
		if !node.Master && node.MasterID != "" {
			n++
		}
	}
	return n
}

// A Node is one node of a cluster, as CLUSTER NODES describes it.
type Node struct {
	ID   string
	Addr string // host:port, the port clients use
	// Master reports a master; a replica has the ID of its master.
	Master   bool
	MasterID string
	// Failed reports the node flagged failed (fail), or suspected of it
	// (fail?) by the node asked.
	Failed bool
	// Slots are the slot ranges a master serves, inclusive.
	Slots [][2]int
}

// Serves reports whether n serves slot.
func (n Node) Serves(slot int) bool {
	for _, r := range n.Slots {
		if r[0] <= slot && slot <= r[1] {
			return true
		}
	}
	return false
}

// Nodes returns the cluster's nodes as a running server sees them.
func (c *Cluster) Nodes() ([]Node, error) {
	s := c.live()
	if s == nil {
		return nil, errors.New("redistest: no server of the cluster is running")
	}
	return nodesAt(s.Addr())
}

// live returns a running server, or nil.
func (c *Cluster) live() *Server {
	for _, s := range c.Servers {
		if s.running() {
			return s
		}
	}
	return nil
}

// Server returns the server at addr, or nil if none of the cluster's is.
func (c *Cluster) Server(addr string) *Server {
	for _, s := range c.Servers {
		if s.Addr() == addr {
			return s
		}
	}
	return nil
}

// Masters returns the servers that serve slots now, as a running server
// sees it: a failed master keeps its slots until a replica takes them.
func (c *Cluster) Masters() ([]*Server, error) {
	nodes, err := c.Nodes()
	if err != nil {
		return nil, err
	}
	var masters []*Server
	for _, n := range nodes {
		if n.Master && len(n.Slots) > 0 {
			if s := c.Server(n.Addr); s != nil {
				masters = append(masters, s)
			}
		}
	}
	return masters, nil
}

// MasterOf returns the master that serves the slot of key (a Redis key,
// hash tags and all), as a running server sees it.
func (c *Cluster) MasterOf(key string) (*Server, error) {
	s := c.live()
	if s == nil {
		return nil, errors.New("redistest: no server of the cluster is running")
	}
	r, err := Do(s.Addr(), "CLUSTER", "KEYSLOT", key)
	if err != nil {
		return nil, err
	}
	slot, err := strconv.Atoi(r)
	if err != nil {
		return nil, fmt.Errorf("redistest: CLUSTER KEYSLOT replied %q", r)
	}
	nodes, err := nodesAt(s.Addr())
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if n.Master && n.Serves(slot) {
			if m := c.Server(n.Addr); m != nil {
				return m, nil
			}
		}
	}
	return nil, fmt.Errorf("redistest: no master of this cluster serves slot %d", slot)
}

// WaitPromoted waits, after dead was stopped, until one of its replicas
// has taken its slots and every running server counts the cluster ok,
// and returns that replica, a master now. It gives up after timeout.
func (c *Cluster) WaitPromoted(dead *Server, timeout time.Duration) (*Server, error) {
	id, ok := c.ids[dead]
	if !ok {
		return nil, fmt.Errorf("redistest: %s is not a server of this cluster", dead.Addr())
	}
	deadline := time.Now().Add(timeout)
	var err error
	for {
		var promoted *Server
		if promoted, err = c.promoted(id); err == nil {
			return promoted, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("redistest: no replica of %s promoted after %v: %v", dead.Addr(), timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// promoted returns the server that has taken the slots of the master
// whose ID is id, if every running server agrees and counts the cluster
// ok.
func (c *Cluster) promoted(id string) (*Server, error) {
	var promoted *Server
	for _, s := range c.Servers {
		if !s.running() {
			continue
		}
		info, err := Do(s.Addr(), "CLUSTER", "INFO")
		if err != nil {
			return nil, err
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return nil, fmt.Errorf("%s: cluster not ok", s.Addr())
		}
		nodes, err := nodesAt(s.Addr())
		if err != nil {
			return nil, err
		}
		var now *Server
		for _, n := range nodes {
			switch {
			case n.ID == id && len(n.Slots) > 0:
				return nil, fmt.Errorf("%s: the failed master still serves slots", s.Addr())
			case n.Master && len(n.Slots) > 0 && !n.Failed && c.replicaOf[n.ID] == id:
				now = c.Server(n.Addr)
			}
		}
		if now == nil || promoted != nil && promoted != now {
			return nil, fmt.Errorf("%s: no replica of the failed master serves its slots", s.Addr())
		}
		promoted = now
	}
	if promoted == nil {
		return nil, errors.New("no server running")
	}
	return promoted, nil
}

// StallReplicas cuts the replication links of master's replicas and
// keeps them from coming back (each is given a wrong masterauth): from
// then on they receive none of master's writes, as replicas fallen
// behind, and a failover of master loses every write it makes. It is
// for tests of what a failover loses; the replicas can still be
// promoted.
func (c *Cluster) StallReplicas(master *Server) error {
	id, ok := c.ids[master]
	if !ok {
		return fmt.Errorf("redistest: %s is not a server of this cluster", master.Addr())
	}
	for s, sid := range c.ids {
		if c.replicaOf[sid] != id || !s.running() {
			continue
		}
		if _, err := Do(s.Addr(), "CONFIG", "SET", "masterauth", "redistest-stalled"); err != nil {
			return err
		}
	}
	_, err := Do(master.Addr(), "CLIENT", "KILL", "TYPE", "replica")
	return err
}

// nodesAt returns CLUSTER NODES of the server at addr, parsed.
func nodesAt(addr string) ([]Node, error) {
	out, err := Do(addr, "CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	var nodes []Node
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		// <id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent>
		// <pong-recv> <config-epoch> <link-state> <slot>...
		n := Node{ID: f[0], Addr: f[1]}
		if i := strings.IndexAny(n.Addr, "@,"); i >= 0 {
			n.Addr = n.Addr[:i]
		}
		for flag := range strings.SplitSeq(f[2], ",") {
			switch flag {
			case "master":
				n.Master = true
			case "fail", "fail?":
				n.Failed = true
			}
		}
		if f[3] != "-" {
			n.MasterID = f[3]
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being migrated or imported
			}
			lo, hi, _ := strings.Cut(r, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				return nil, fmt.Errorf("redistest: CLUSTER NODES slot %q", r)
			}
			b := a
			if hi != "" {
				if b, err = strconv.Atoi(hi); err != nil {
					return nil, fmt.Errorf("redistest: CLUSTER NODES slot %q", r)
				}
			}
			n.Slots = append(n.Slots, [2]int{a, b})
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}
