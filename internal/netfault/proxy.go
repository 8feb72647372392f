// Package netfault tests what the network between a process and its
// shared store's server (Redis, PostgreSQL) does to the store: latency, a
// bandwidth cap, connection resets and a black hole, injected by Shopify's
// toxiproxy, run in the test's own process. It is a module of its own so
// that toxiproxy's dependencies stay out of the main module's go.mod.
package netfault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// A Proxy is a toxiproxy proxy in this process, on a free loopback port,
// that forwards every connection to one server and applies the faults
// injected into it. It is safe for concurrent use.
type Proxy struct {
	p *toxiproxy.Proxy
}

// Start starts a Proxy to upstream (host:port), stopped at the end of t:
// its connections are then closed.
func Start(t testing.TB, upstream string) *Proxy {
	t.Helper()
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(server, t.Name(), "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("netfault: start a proxy to %s: %v", upstream, err)
	}
	t.Cleanup(p.Stop)
	return &Proxy{p: p}
}

// Addr returns the address clients connect to, 127.0.0.1:port.
func (p *Proxy) Addr() string { return p.p.Listen }

// A Fault is a set of toxics: what happens to the bytes of every
// connection through a Proxy, in one direction or both.
type Fault struct {
	Name   string
	toxics []toxic
}

// A toxic is what toxiproxy's API takes as JSON: Stream is "upstream"
// (client to server) or "downstream" (server to client).
type toxic struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     string         `json:"stream"`
	Toxicity   float32        `json:"toxicity"`
	Attributes map[string]any `json:"attributes"`
}

func both(typ string, attrs map[string]any) []toxic {
	return []toxic{
		{Name: typ + "_up", Type: typ, Stream: "upstream", Toxicity: 1, Attributes: attrs},
		{Name: typ + "_down", Type: typ, Stream: "downstream", Toxicity: 1, Attributes: attrs},
	}
}

// Latency delays the server's replies by latency ± jitter (uniform),
// whole milliseconds. A connection's bytes stay in order, so a reply
// never overtakes an earlier one.
func Latency(latency, jitter time.Duration) Fault {
	return Fault{
		Name: fmt.Sprintf("latency %v±%v", latency, jitter),
		toxics: []toxic{{Name: "latency", Type: "latency", Stream: "downstream", Toxicity: 1,
			Attributes: map[string]any{"latency": latency.Milliseconds(), "jitter": jitter.Milliseconds()}}},
	}
}

// Bandwidth caps each connection at kbps thousand bytes a second, each
// way.
func Bandwidth(kbps int) Fault {
	return Fault{Name: fmt.Sprintf("bandwidth %d kB/s", kbps), toxics: both("bandwidth", map[string]any{"rate": kbps})}
}

// Reset resets every connection as soon as the client sends on it
// (toxiproxy's reset_peer): what the client sent never reaches the
// server. Connections opened while it holds are accepted and reset with
// an RST at the first byte; those open before are closed.
var Reset = Fault{Name: "reset", toxics: []toxic{{Name: "reset", Type: "reset_peer", Stream: "upstream", Toxicity: 1,
	Attributes: map[string]any{"timeout": 0}}}}

// BlackHole drops every byte, both ways, and closes nothing: a
// partition. Connections are still accepted (the proxy answers the TCP
// handshake), so clients see timeouts, not refusals. Healing closes the
// connections it held.
var BlackHole = Fault{Name: "black hole", toxics: both("timeout", map[string]any{"timeout": 0})}

// Inject applies f to every connection through p, open or opened later.
// Bytes the proxy already passed on are not recalled: a request on its
// way to the server may still reach it.
func (p *Proxy) Inject(f Fault) error {
	for _, x := range f.toxics {
		b, err := json.Marshal(x)
		if err != nil {
			return err
		}
		if _, err := p.p.Toxics.AddToxicJson(bytes.NewReader(b)); err != nil {
			return fmt.Errorf("netfault: inject %s: %w", f.Name, err)
		}
	}
	return nil
}

// Heal removes every fault from p.
func (p *Proxy) Heal() { p.p.Toxics.ResetToxics(context.Background()) }
