package redisstore

import (
	"context"
	"slices"
	"time"

	"github.com/leakybucket/leakybucket/bucket/driver"
	"github.com/redis/go-redis/v9"
)

// SetClock makes s send now() as the script's time (ARGV[2]) instead of
// letting it read TIME: the parity test drives Redis on a fake clock. It
// hooks s's client, which must serve s alone.
func SetClock(s *Store, now func() int64) { s.client.AddHook(clockHook(now)) }

// A clockHook appends the time it returns to every script call a client
// sends.
type clockHook func() int64

func (clockHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h clockHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		return h.timed(ctx, []redis.Cmder{cmd}, func(ctx context.Context, cmds []redis.Cmder) error {
			return next(ctx, cmds[0])
		})
	}
}

func (h clockHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { return h.timed(ctx, cmds, next) }
}

// timed sends cmds through next, each script call with the time as its
// last argument, and copies the replies back into cmds.
func (h clockHook) timed(ctx context.Context, cmds []redis.Cmder, next redis.ProcessPipelineHook) error {
	sent := slices.Clone(cmds)
	for i, c := range cmds {
		if name := c.Name(); name == "evalsha" || name == "eval" {
			timed := redis.NewCmd(ctx, append(slices.Clone(c.Args()), h())...)
			timed.SetFirstKeyPos(3)
			sent[i] = timed
		}
	}
	err := next(ctx, sent)
	for i, c := range cmds {
		if sent[i] != c {
			c.(*redis.Cmd).SetVal(sent[i].(*redis.Cmd).Val())
			c.SetErr(sent[i].Err())
		}
	}
	return err
}

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
	res := s.runOne(ctx, s.opOf(req.Key, args))
	return res.r.decisionOf(&req), res.r.fresh, res.err
}

// RawRefund and RawPause send a refund or a pause straight to Redis and
// return the moment, in µs, the state becomes fresh (0 if it is).
func RawRefund(ctx context.Context, s *Store, req driver.Request, d driver.Decision) (int64, error) {
	return s.runFresh(ctx, s.opOf(req.Key, appendRefund(nil, &req, d, true)))
}

func RawPause(ctx context.Context, s *Store, key string, d time.Duration) (int64, error) {
	return s.runFresh(ctx, s.opOf(key, appendPause(nil, d)))
}

func (s *Store) runFresh(ctx context.Context, o op) (int64, error) {
	res := s.runOne(ctx, o)
	return res.r.fresh, res.err
}

// Client returns the client s was made with.
func (s *Store) Client() redis.UniversalClient { return s.client }

var IsUnavailable = isUnavailable

// RawLearn sends a learning straight to Redis and returns the interval
// the key applies from now and the moment, in µs, its state becomes fresh
// (0 if it is).
func RawLearn(ctx context.Context, s *Store, key string, lim driver.Limit, fb driver.Feedback) (time.Duration, int64, error) {
	res := s.runOne(ctx, s.opOf(key, appendLearn(nil, &lim, &fb)))
	return time.Duration(res.r.interval) * tick, res.r.fresh, res.err
}

// AdmitWith decides req with the script source instead of the Store's
// own, as a process running another version would: one that knows no
// learned limits, for a request of a fixed limit.
func AdmitWith(ctx context.Context, s *Store, source string, req driver.Request) (driver.Decision, error) {
	args, err := appendAdmit(nil, &req)
	if err != nil {
		return driver.Decision{}, err
	}
	cmd := redis.NewCmd(ctx, "eval", source, 1, s.RedisKey(req.Key), args)
	s.client.Process(ctx, cmd)
	var out [1]result
	parseReplies(cmd, out[:])
	return out[0].r.decisionOf(&req), out[0].err
}

// KeySlot is the Redis Cluster slot of a Redis key, as the Store
// computes it.
var KeySlot = keySlot

// SlotTag returns the hash tag lease set names carry for slot.
func SlotTag(slot int) string { return string(slotTags()[slot][:]) }

// DownMasters returns how many masters of its Cluster s knows down.
func DownMasters(s *Store) int {
	if s.masters == nil {
		return 0
	}
	if p := s.masters.down.Load(); p != nil {
		return len(*p)
	}
	return 0
}
