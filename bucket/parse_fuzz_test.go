package bucket_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/leakybucket/leakybucket/bucket"
)

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"5/s", "100/1m burst=20", "5/s, burst=10, quota=1000/1h quota=50000/1d", "unlimited",
		"3/100ms", "7/2d", "1/3650d", "2/1h30m", "1/1.5µs", "9223372036854775807/1ns burst=9223372036854775807",
		"", "5", "x/s", "5/x", "5/s burst=", "5/s burst=0", "5/s foo=1", "5/s quota=0/1h", "-1/s",
		"+5/s", "5/+1s", "5/0x10s", "5/1e3s", "5/.5s", "5/1h0m", "5/s quota=1/1s quota=1/1000ms",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := bucket.Parse(s)
		if err != nil {
			if !errors.Is(err, bucket.ErrInvalidLimit) || !strings.HasPrefix(err.Error(), "bucket: invalid limit: ") {
				t.Fatalf("Parse(%q) error %v, want one matching ErrInvalidLimit", s, err)
			}
			var le *bucket.LimitError
			if !errors.As(err, &le) || le.Field == "" {
				t.Fatalf("Parse(%q) error %v names no field", s, err)
			}
			return
		}
		if err := l.Validate(); err != nil {
			t.Fatalf("Parse(%q) = %v, which does not validate: %v", s, l, err)
		}
		again, err := bucket.Parse(l.String())
		if err != nil {
			t.Fatalf("Parse(%q) = %v, but Parse(%q) fails: %v", s, l, l.String(), err)
		}
		if !sameLimit(again, l) {
			t.Fatalf("Parse(%q) = %+v, but Parse(its String %q) = %+v", s, l, l.String(), again)
		}
	})
}
