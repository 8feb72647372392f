package redisstore

import (
	"context"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/redis/go-redis/v9"
)

// SetClock makes s send now() as the script's time (ARGV[2]) instead of
// letting it read TIME: the parity test drives Redis on a fake clock.
func SetClock(s *Store, now func() int64) { s.clock = now }

// IsLocal reports whether an admission was decided by the FailLocal
// fallback.
func IsLocal(d driver.Decision) bool { return d.Allowed && d.Booking.TAT < 0 }

// RawAdmit sends one admission straight to Redis and returns its
// decision and the moment, in µs, its state becomes fresh (0 if it is).
func RawAdmit(ctx context.Context, s *Store, req driver.Request) (driver.Decision, int64, error) {
	args, err := appendAdmit(nil, &req)
	if err != nil {
		return driver.Decision{}, 0, err
	}
	res := s.runOne(ctx, s.RedisKey(req.Key), args)
	return res.r.decision(), res.r.fresh, res.err
}

// RawRefund and RawPause send a refund or a pause straight to Redis and
// return the moment, in µs, the state becomes fresh (0 if it is).
func RawRefund(ctx context.Context, s *Store, req driver.Request, d driver.Decision) (int64, error) {
	return s.runFresh(ctx, s.RedisKey(req.Key), appendRefund(nil, &req, d))
}

func RawPause(ctx context.Context, s *Store, key string, d time.Duration) (int64, error) {
	return s.runFresh(ctx, s.RedisKey(key), appendPause(nil, d))
}

func (s *Store) runFresh(ctx context.Context, key string, args []byte) (int64, error) {
	res := s.runOne(ctx, key, args)
	return res.r.fresh, res.err
}

// Client returns the client s was made with.
func (s *Store) Client() redis.UniversalClient { return s.client }

var IsUnavailable = isUnavailable

// AdmitWith decides req with the script source instead of the Store's
// own, as a process running another version would.
func AdmitWith(ctx context.Context, s *Store, source string, req driver.Request) (driver.Decision, error) {
	args, err := appendAdmit(nil, &req)
	if err != nil {
		return driver.Decision{}, err
	}
	cmd := redis.NewCmd(ctx, "eval", source, 1, s.RedisKey(req.Key), args)
	s.client.Process(ctx, cmd)
	var out [1]result
	parseReplies(cmd, out[:])
	return out[0].r.decision(), out[0].err
}
