package netfault_test

import (
	"testing"
	"time"

	"github.com/leakybucket/leakybucket/internal/failover"
	"github.com/leakybucket/leakybucket/internal/faulttest"
	"github.com/leakybucket/leakybucket/internal/netfault"
)

// inFlight is how long a request the proxy passed on before a fault may
// take to reach the server and be decided: the fault test counts a
// decision the server makes after the fault as a failure of the test.
const inFlight = 100 * time.Millisecond

// TestPolicies resets every connection to the server, and then drops
// every byte (a black hole), for 600ms while 48 goroutines admit and 8
// wait on four keys, under each failure policy (see backends), and heals
// the network. internal/faulttest says what must hold: every call
// returns within its context, errors match ErrUnavailable under
// FailClosed alone, FailOpen and FailLocal answer every call, the
// server's admissions before and after the fault and the local buckets'
// each conform to the limit, and the server admits again within 5s of
// the heal. The server keeps its state: unlike a restart, the fault
// forgets nothing.
func TestPolicies(t *testing.T) {
	for _, b := range backends {
		for _, f := range []netfault.Fault{netfault.Reset, netfault.BlackHole} {
			for _, policy := range b.policies {
				t.Run(b.name+"/"+f.Name+"/"+policy.String(), func(t *testing.T) {
					testPolicy(t, b, f, policy)
				})
			}
		}
	}
}

func testPolicy(t *testing.T, b backend, f netfault.Fault, policy failover.Policy) {
	s := b.open(t, options{policy: policy, retry: 20 * time.Millisecond})
	faulttest.Run(t, faulttest.Config{
		Store:       s.store,
		Policy:      policy.String(),
		Unavailable: b.unavailable,
		IsLocal:     failover.IsLocal,
		Stop: func() error {
			if err := s.proxy.Inject(f); err != nil {
				return err
			}
			time.Sleep(inFlight)
			return nil
		},
		Start: func() error {
			s.proxy.Heal()
			return nil
		},
	})
}
