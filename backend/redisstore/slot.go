package redisstore

import (
	"strings"
	"sync"
)

// A bucket's leases live in a sorted set beside its key, which the
// script changes together with the key: in a Redis Cluster the two must
// share a slot. Bucket keys carry no hash tag of their own (a key's bytes
// follow the prefix unchanged), so the set's name carries one chosen for
// the bucket key's slot: a short tag whose CRC16 falls in that slot.

// slots is the number of Redis Cluster hash slots.
const slots = 16384

// keySlot returns the Redis Cluster hash slot of key, as Redis computes
// it: the CRC16 of its hash tag (the bytes between its first '{' and the
// next '}', if any), else of the whole key.
func keySlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if n := strings.IndexByte(key[open+1:], '}'); n > 0 {
			key = key[open+1 : open+1+n]
		}
	}
	return int(crc16(key)) % slots
}

// crc16 is CRC16-CCITT (XMODEM), the checksum of Redis Cluster's slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^s[i]]
	}
	return crc
}

var crc16Table = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()

// tagChars are the characters of slot tags.
const tagChars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// slotTags returns, for each slot, the first three-character string of
// tagChars (in the order of tagChars, first character first) whose CRC16
// falls in it: every slot has one. Lease set names depend on it, so it
// never changes. Built on first use, in about a millisecond (48 KiB), and
// never changed after.
var slotTags = sync.OnceValue(func() *[slots][3]byte {
	var (
		tags  [slots][3]byte
		found [slots]bool
	)
	for _, a := range []byte(tagChars) {
		for _, b := range []byte(tagChars) {
			for _, c := range []byte(tagChars) {
				tag := [3]byte{a, b, c}
				if s := int(crc16(string(tag[:]))) % slots; !found[s] {
					found[s], tags[s] = true, tag
				}
			}
		}
	}
	return &tags
})

// leaseKey returns the name of the sorted set that holds the leases of
// the bucket whose Redis key is bucketKey: the lease prefix, a hash tag
// of bucketKey's slot, and bucketKey. Distinct bucket keys give distinct
// names (the tag holds no '}', so the name gives bucketKey back), and a
// lease prefix that neither begins nor is begun by the bucket prefix
// keeps them apart from every bucket key.
func leaseKey(leasePrefix, bucketKey string) string {
	tag := slotTags()[keySlot(bucketKey)]
	var b strings.Builder
	b.Grow(len(leasePrefix) + 5 + len(bucketKey))
	b.WriteString(leasePrefix)
	b.WriteByte('{')
	b.Write(tag[:])
	b.WriteByte('}')
	b.WriteString(bucketKey)
	return b.String()
}
