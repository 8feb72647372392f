package sqlitestore

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/leakybucket/leakybucket/bucket"
	"github.com/leakybucket/leakybucket/bucket/driver"
)

func randomQuotas(rng *rand.Rand) []driver.QuotaState {
	qs := make([]driver.QuotaState, 1+rng.IntN(bucket.MaxQuotas))
	for i := range qs {
		qs[i].Window = 1 + rng.Int64N(int64(bucket.MaxDuration/unit))
		index := rng.Int64N(1 << 40)
		for range rng.IntN(driver.QuotaSlots + 2) {
			qs[i].Slots = append(qs[i].Slots, driver.Slot{Index: index, Count: 1 + rng.Int64N(1<<40)})
			index += 1 + rng.Int64N(1000)
		}
	}
	return qs
}

func sameQuotas(a, b []driver.QuotaState) bool {
	return slices.EqualFunc(a, b, func(x, y driver.QuotaState) bool {
		return x.Window == y.Window && slices.Equal(x.Slots, y.Slots)
	})
}

func TestQuotasRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var buf []byte
	var got []driver.QuotaState
	for range 1000 {
		want := randomQuotas(rng)
		if !quotasUsed(want) {
			continue
		}
		buf = appendQuotas(buf[:0], want)
		var err error
		if got, err = decodeQuotas(buf, got); err != nil {
			t.Fatalf("decodeQuotas(appendQuotas(%v)): %v", want, err)
		}
		if !sameQuotas(got, want) {
			t.Fatalf("decodeQuotas(appendQuotas(%d quotas)) = %v, want %v", len(want), got, want)
		}
	}
	// A full quota of 1,000/hour: 101 slots of counts below 128.
	q := driver.QuotaState{Window: 3_600_000_000}
	for i := range int64(101) {
		q.Slots = append(q.Slots, driver.Slot{Index: 1_800_000_000 + i, Count: 9})
	}
	if n := len(appendQuotas(nil, []driver.QuotaState{q})); n > 420 {
		t.Errorf("a full quota of 101 slots encodes to %d bytes, want at most 420", n)
	}
	if got, err := decodeQuotas(nil, got); err != nil || len(got) != 0 {
		t.Errorf("decodeQuotas(nil) = %v, %v, want no quotas", got, err)
	}
}

func FuzzDecodeQuotas(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 8 {
		f.Add(appendQuotas(nil, randomQuotas(rng)))
	}
	f.Add([]byte{1, 0x80})
	f.Add([]byte{1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		qs, err := decodeQuotas(b, nil)
		if err != nil {
			return
		}
		if !quotasUsed(qs) {
			return
		}
		again, err := decodeQuotas(appendQuotas(nil, qs), nil)
		if err != nil || !sameQuotas(again, qs) {
			t.Fatalf("decode(%x) = %v, which re-decodes to %v, %v", b, qs, again, err)
		}
	})
}
