package latency

import "math/bits"

// A Shape maps durations (ns) to the buckets of a histogram: 2^sub
// buckets per power of two, each within 1/2^sub above the values it
// holds, for values in [lo, hi]; values outside count in the first or last
// bucket.
type Shape struct {
	sub    int
	lo, hi int64
	offset int // the raw bucket of lo
}

// NewShape returns the shape of 2^sub buckets per power of two over
// [lo, hi], 0 ≤ lo ≤ hi.
func NewShape(sub int, lo, hi int64) Shape {
	s := Shape{sub: sub, lo: lo, hi: hi}
	s.offset = s.raw(lo)
	return s
}

// raw is the bucket of v ≥ 0 counting from 0: values below 2^sub have one
// each, then 2^sub per power of two.
func (s Shape) raw(v int64) int {
	if v < 1<<s.sub {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 1 - s.sub // v >> e has sub+1 bits
	return (e+1)<<s.sub | int(v>>e)&(1<<s.sub-1)
}

// Bucket returns the bucket of v.
func (s Shape) Bucket(v int64) int { return s.raw(min(max(v, s.lo), s.hi)) - s.offset }

// Buckets returns how many buckets the shape has.
func (s Shape) Buckets() int { return s.Bucket(s.hi) + 1 }

// Lower returns the least value of bucket i.
func (s Shape) Lower(i int) int64 {
	if i == 0 {
		return s.lo
	}
	return s.Upper(i-1) + 1
}

// Upper returns the largest value of bucket i.
func (s Shape) Upper(i int) int64 {
	i += s.offset
	if i < 1<<s.sub {
		return int64(i)
	}
	e := i>>s.sub - 1
	m := int64(i&(1<<s.sub-1)) | 1<<s.sub
	return (m+1)<<e - 1
}
