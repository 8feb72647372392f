package limitmock_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/leakybucket/leakybucket/internal/limitmock"
	"github.com/leakybucket/leakybucket/limitheader"
)

func get(t *testing.T, s *limitmock.Server, tenant string, n int) *http.Response {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("%s/tenants/%s/items/%d", s.URL(), tenant, n))
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

func start(t *testing.T, cfg limitmock.Config) *limitmock.Server {
	t.Helper()
	s, err := limitmock.Start(cfg)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s
}

// A burst beyond the slack is refused; the IETF fields say the policy
// and what is left; tenants are metered apart.
func TestIETF(t *testing.T) {
	s := start(t, limitmock.Config{Schedule: []limitmock.Step{{0, 10}}, Headers: limitmock.IETF, Slack: 100 * time.Millisecond})
	var codes []int
	var sigs []limitheader.Signal
	for i := range 5 {
		resp := get(t, s, "a", i+1)
		codes = append(codes, resp.StatusCode)
		sigs = append(sigs, limitheader.Parse(resp))
	}
	// 100 ms of slack at 10/s: the first and one more pass at once (a
	// loaded machine may let a third through as time passes).
	assert.Equal(t, []int{200, 200}, codes[:2])
	assert.Equal(t, http.StatusTooManyRequests, codes[4])
	assert.Equal(t, limitheader.IETF, sigs[0].Family)
	require.Len(t, sigs[0].Policies, 1)
	assert.Equal(t, limitheader.Policy{Name: "default", Quota: 10, Window: time.Second, Unit: "requests"}, sigs[0].Policies[0])
	assert.Equal(t, int64(2), sigs[0].Remaining[0].Units, "the first and one more")
	assert.True(t, sigs[4].Exhausted())
	assert.Equal(t, 200, get(t, s, "b", 1).StatusCode, "tenants share a meter")
	answers := s.Answers()
	assert.Len(t, answers["a"], 5)
	assert.Equal(t, 10, answers["a"][0].Limit)
}

// The limit follows the schedule; without headers a 429 says nothing.
func TestScheduleNone(t *testing.T) {
	s := start(t, limitmock.Config{Schedule: []limitmock.Step{{0, 1000}, {time.Hour, 1}}})
	assert.Equal(t, 1000, s.LimitAt(time.Minute))
	assert.Equal(t, 1, s.LimitAt(time.Hour))
	resp := get(t, s, "a", 1)
	assert.Equal(t, 200, resp.StatusCode)
	for _, h := range []string{"Retry-After", "RateLimit", "RateLimit-Policy", "X-RateLimit-Remaining"} {
		assert.Empty(t, resp.Header.Get(h))
	}
	_, err := limitmock.Start(limitmock.Config{Schedule: []limitmock.Step{{time.Second, 1}}})
	assert.Error(t, err)
	_, err = limitmock.Start(limitmock.Config{Schedule: []limitmock.Step{{0, 1}, {0, 2}}})
	assert.Error(t, err)
	_, err = limitmock.ParseFamily("gitlab")
	assert.Error(t, err)
}

// The GitHub family's fixed window allows rate × window, says what is
// left and when the window ends, and refuses past it.
func TestGitHub(t *testing.T) {
	s := start(t, limitmock.Config{Schedule: []limitmock.Step{{0, 1}}, Headers: limitmock.GitHub, Window: time.Hour})
	resp := get(t, s, "a", 1)
	require.Equal(t, 200, resp.StatusCode)
	sig := limitheader.Parse(resp)
	assert.Equal(t, limitheader.XRateLimit, sig.Family)
	assert.Equal(t, int64(3600), sig.Policies[0].Quota)
	require.Len(t, sig.Remaining, 1)
	assert.Equal(t, int64(3599), sig.Remaining[0].Units)
	assert.LessOrEqual(t, sig.Remaining[0].Reset, time.Hour)
	assert.Positive(t, sig.Remaining[0].Reset)
}
