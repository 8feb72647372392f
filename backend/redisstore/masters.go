package redisstore

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/leakybucket/leakybucket/internal/failover"
	"github.com/redis/go-redis/v9"
)

// In a Redis Cluster each master fails on its own, so a Store of a
// Cluster keeps what it knows of each master apart: one failed master
// sends the keys of its slots to the failure policy, and the others'
// keys go on to Redis. While no master is known down, which is nearly
// always, a call costs one atomic load more than on a single server;
// while one is, a call looks its key's master up in the client's slot
// map (ClusterClient.MasterForKey, about a microsecond).
//
// No call waits for a master known down. Every RetryInterval
// (failover.Guard) the first call that finds one due for a probe starts
// the probe on a goroutine of the Store and is answered by the policy
// like the others: on a single server a call probes, but in a Cluster
// its round trip carries other masters' calls too, which would wait for
// the dead one's timeouts and its client's retries. The probe is a
// request of the script that changes nothing (the release of a lease no
// one holds) on the slot of that call's key, so that it finds what an
// admission would: the script, a master that takes writes, a cluster
// that serves the slot.
//
// A master is known by its address. When its replica takes over, the
// slots move to another address, which is not known down: the keys go
// back to Redis as soon as the client has learnt the new slot map. The
// client learns it from a MOVED reply, or when asked (ReloadState); a
// dead master answers neither, so every failure, a probe's too, asks for
// a reload. The dead master is then asked about no more, and forgotten
// (failover.Guard's Idle).

// ask reports whether to send a call about key's bucket to Redis, and
// whether the call probes: as the Guard's Ask says for a single server;
// in a Cluster, unless the master of key's slot is known down (it is
// returned then), and never as a probe (masters probe by themselves).
func (s *Store) ask(key string) (m *master, ask, probe bool) {
	if s.masters == nil {
		ask, probe = s.guard.Ask()
		return nil, ask, probe
	}
	m, ask = s.masters.ask(key)
	return m, ask, false
}

// settle updates what the Store knows of Redis after a call about key's
// bucket that ended with err; m and probe are what ask returned.
func (s *Store) settle(key string, m *master, err error, probe bool) {
	if s.masters == nil {
		s.guard.Settle(err, probe)
		return
	}
	s.masters.settle(key, m, err, probe)
}

// masters is what a Store of a Cluster knows of its masters.
type masters struct {
	client *redis.ClusterClient
	guard  *failover.Guard
	prefix string
	retry  time.Duration // the Guard's Retry: how often to look for masters to forget

	// probe runs a probe of the master of key's bucket and returns its
	// error.
	probe func(key string) error

	mu      sync.Mutex                         // serializes changes of down, and closed
	down    atomic.Pointer[map[string]*master] // by address; nil while none is known down
	forget  atomic.Int64                       // Unix ns of the next look for masters to forget
	probing sync.WaitGroup                     // the probes running
	closed  bool
}

// A master is a master known down, and its address.
type master struct {
	failover.Node
	addr string
}

// cause returns the failure that made m down, nil if m is nil (no master
// known down, or a single server).
func (m *master) cause() error {
	if m == nil {
		return nil
	}
	return m.Err()
}

func newMasters(client *redis.ClusterClient, guard *failover.Guard, prefix string, retry time.Duration, probe func(key string) error) *masters {
	return &masters{client: client, guard: guard, prefix: prefix, retry: retry, probe: probe}
}

// close waits for the probes running; no other starts after it.
func (ms *masters) close() {
	ms.mu.Lock()
	ms.closed = true
	ms.mu.Unlock()
	ms.probing.Wait()
}

// anyDown reports whether some master is known down.
func (ms *masters) anyDown() bool { return ms.down.Load() != nil }

// ask reports whether to send a call about key's bucket to Redis: yes
// unless the master that serves its slot is known down, which it then
// returns (nil otherwise). If that master is due for a probe, it starts
// one.
func (ms *masters) ask(key string) (m *master, ask bool) {
	down := ms.down.Load()
	if down == nil {
		return nil, true
	}
	ms.forgetIdle()
	if m = (*down)[ms.addr(key)]; m == nil {
		return nil, true
	}
	if ask, probe := ms.guard.AskNode(&m.Node); probe {
		ms.startProbe(key, m)
	} else if ask {
		return m, true // up again, or RetryInterval is negative: every call asks
	}
	return m, false
}

// startProbe probes m, the master of key's bucket, on a goroutine.
func (ms *masters) startProbe(key string, m *master) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.closed {
		ms.guard.SettleNode(&m.Node, driver.ErrClosed, true)
		return
	}
	ms.probing.Go(func() { ms.settle(key, m, ms.probe(key), true) })
}

// settle updates what the Store knows of the master of key's bucket
// after a call that ended with err, as failover.Guard's SettleNode does;
// m is the master ask returned. A failure marks the master that serves
// the key's slot down and asks the client to reload its slot map.
func (ms *masters) settle(key string, m *master, err error, probe bool) {
	outage := ms.guard.Outage(err)
	if m == nil {
		if !outage {
			return
		}
		m = ms.add(ms.addr(key))
	}
	ms.guard.SettleNode(&m.Node, err, probe)
	switch {
	case outage:
		ms.client.ReloadState(context.Background())
	case m.Up():
		ms.remove(m)
	}
}

// addr returns the address of the master that serves key's slot in the
// client's slot map, or "" if the client has none.
func (ms *masters) addr(key string) string {
	c, err := ms.client.MasterForKey(context.Background(), ms.prefix+key)
	if err != nil {
		return ""
	}
	return c.Options().Addr
}

// add returns the master at addr, known down from now on.
func (ms *masters) add(addr string) *master {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var down map[string]*master
	if p := ms.down.Load(); p != nil {
		if m := (*p)[addr]; m != nil {
			return m
		}
		down = maps.Clone(*p)
	} else {
		down = make(map[string]*master, 1)
		ms.forget.Store(time.Now().Add(ms.retry).UnixNano())
	}
	m := &master{addr: addr}
	down[addr] = m
	ms.down.Store(&down)
	return m
}

// remove forgets the masters gone.
func (ms *masters) remove(gone ...*master) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	p := ms.down.Load()
	if p == nil {
		return
	}
	down := maps.Clone(*p)
	for _, m := range gone {
		if down[m.addr] == m {
			delete(down, m.addr)
		}
	}
	if len(down) == 0 {
		ms.down.Store(nil)
	} else {
		ms.down.Store(&down)
	}
}

// forgetIdle forgets, at most once per RetryInterval, the masters known
// down that no call has asked about since their probe was due: those
// whose slots have moved to a replica, and those whose keys are not in
// use. A call for a key of one that is still down fails once more and
// marks it down again.
func (ms *masters) forgetIdle() {
	now := time.Now().UnixNano()
	next := ms.forget.Load()
	if now < next || !ms.forget.CompareAndSwap(next, now+ms.retry.Nanoseconds()) {
		return
	}
	p := ms.down.Load()
	if p == nil {
		return
	}
	var idle []*master
	for _, m := range *p {
		if ms.guard.Idle(&m.Node) {
			idle = append(idle, m)
		}
	}
	if len(idle) > 0 {
		ms.remove(idle...)
	}
}
