package bucket_test

import (
	"testing"

	"github.com/stretchr/testify/require"

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
			require.ErrorIs(t, err, bucket.ErrInvalidLimit, "Parse(%q)", s)
			require.Regexp(t, "^bucket: invalid limit: ", err.Error(), "Parse(%q)", s)
			var le *bucket.LimitError
			require.ErrorAs(t, err, &le, "Parse(%q)", s)
			require.NotEmpty(t, le.Field, "Parse(%q) error %v names no field", s, err)
			return
		}
		require.NoError(t, l.Validate(), "Parse(%q) = %v, which does not validate", s, l)
		again, err := bucket.Parse(l.String())
		require.NoError(t, err, "Parse(%q) = %v, then Parse of its String %q", s, l, l.String())
		require.Equal(t, canon(l), canon(again), "Parse(%q), then Parse of its String %q", s, l.String())
	})
}
