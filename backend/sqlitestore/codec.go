package sqlitestore

import (
	"encoding/binary"
	"errors"

	"github.com/leakybucket/leakybucket/bucket/driver"
)

// quotasFormat is the first byte of an encoded quota state. A new layout
// takes a new value and a schema migration.
const quotasFormat = 1

// quotasUsed reports whether any quota of qs has a slot in use. A state
// without one is equivalent to no quota state, and is stored as NULL.
func quotasUsed(qs []driver.QuotaState) bool {
	for _, q := range qs {
		if len(q.Slots) > 0 {
			return true
		}
	}
	return false
}

// appendQuotas appends the compact form of qs to b and returns it. The form is the format byte, then for each quota its window in ticks
// (uvarint) and its slot count (uvarint), then for each slot its index as
// the difference from the previous slot's (varint, the first from 0) and
// its count (uvarint). A quota of 1,000/hour with all 101 slots in use
// takes about 400 bytes; a typical one a few dozen.
func appendQuotas(b []byte, qs []driver.QuotaState) []byte {
	b = append(b, quotasFormat)
	for _, q := range qs {
		b = binary.AppendUvarint(b, uint64(q.Window))
		b = binary.AppendUvarint(b, uint64(len(q.Slots)))
		prev := int64(0)
		for _, s := range q.Slots {
			b = binary.AppendVarint(b, s.Index-prev)
			b = binary.AppendUvarint(b, uint64(s.Count))
			prev = s.Index
		}
	}
	return b
}

var errBadQuotas = errors.New("malformed quota state")

// decodeQuotas decodes b, as written by appendQuotas, into qs, reusing its
// memory. A nil or empty b decodes to no quota state. It never panics: a
// malformed b returns errBadQuotas.
func decodeQuotas(b []byte, qs []driver.QuotaState) ([]driver.QuotaState, error) {
	qs = qs[:0]
	if len(b) == 0 {
		return qs, nil
	}
	if b[0] != quotasFormat {
		return qs, errBadQuotas
	}
	b = b[1:]
	for len(b) > 0 {
		if len(qs) == driver.MaxQuotas {
			return qs, errBadQuotas
		}
		window, ok := uvarint(&b)
		if !ok || window < 1 || window > uint64(driver.MaxDuration) {
			return qs, errBadQuotas
		}
		n, ok := uvarint(&b)
		if !ok || n > uint64(len(b))/2 { // each slot takes at least 2 bytes
			return qs, errBadQuotas
		}
		var slots []driver.Slot
		if len(qs) < cap(qs) {
			slots = qs[:len(qs)+1][len(qs)].Slots[:0]
		}
		index := int64(0)
		for i := range n {
			delta, ok := varint(&b)
			if !ok || i > 0 && delta <= 0 {
				return qs, errBadQuotas
			}
			count, ok := uvarint(&b)
			if !ok || count < 1 || count > 1<<62 {
				return qs, errBadQuotas
			}
			index += delta
			slots = append(slots, driver.Slot{Index: index, Count: int64(count)})
		}
		qs = append(qs, driver.QuotaState{Window: int64(window), Slots: slots})
	}
	return qs, nil
}

func uvarint(b *[]byte) (uint64, bool) {
	v, n := binary.Uvarint(*b)
	if n <= 0 {
		return 0, false
	}
	*b = (*b)[n:]
	return v, true
}

func varint(b *[]byte) (int64, bool) {
	v, n := binary.Varint(*b)
	if n <= 0 {
		return 0, false
	}
	*b = (*b)[n:]
	return v, true
}

// learnedFormat is the first byte of a quotas column that a learned record
// leads (schema version 3): the record, then the quota state as
// appendQuotas writes it, or nothing. A program of version 2 finds no
// quota state of its own format there and reports the row corrupt rather
// than misread it. As for quotasFormat, a new layout takes a new value and
// a schema migration.
const learnedFormat = 2

// maxSpan is driver.MaxDuration in ticks: no interval a key learns is
// longer.
var maxSpan = driver.Ticks(driver.MaxDuration, unit)

// appendLearned appends the form of the learned record l to b and returns
// it: learnedFormat, then l's intervals and instants in the order of
// driver.Learned's fields, as varints; about 30 to 45 bytes.
func appendLearned(b []byte, l *driver.Learned) []byte {
	b = append(b, learnedFormat)
	for _, v := range [...]int64{l.Interval, l.Recover, l.Drop, l.DropGen, l.Until, l.Pace, l.PaceUntil} {
		b = binary.AppendVarint(b, v)
	}
	return b
}

var errBadLearned = errors.New("malformed learned record")

// decodeLearned decodes the learned record at the start of b, as written
// by appendLearned, into l, and returns the rest of b. It never panics: a
// malformed record, or one whose intervals or generation are out of
// range, returns errBadLearned.
func decodeLearned(b []byte, l *driver.Learned) ([]byte, error) {
	if len(b) == 0 || b[0] != learnedFormat {
		return b, errBadLearned
	}
	b = b[1:]
	for _, f := range [...]*int64{&l.Interval, &l.Recover, &l.Drop, &l.DropGen, &l.Until, &l.Pace, &l.PaceUntil} {
		v, ok := varint(&b)
		if !ok {
			return b, errBadLearned
		}
		*f = v
	}
	if l.DropGen < 0 {
		return b, errBadLearned
	}
	for _, v := range [...]int64{l.Interval, l.Recover, l.Pace} {
		if v < 0 || v > maxSpan {
			return b, errBadLearned
		}
	}
	return b, nil
}
