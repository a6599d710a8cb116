package sticky

import (
	"reflect"
	"sync/atomic"
	"unsafe"

	"go.opentelemetry.io/otel/baggage"

	"github.com/switchyard-go/switchyard/deploy"
)

// Cache remembers, for one channel, the decision each recently seen baggage carries, so that
// a request whose baggage is one already seen (traffic's client interceptor puts the rule
// snapshot's pre-built baggage in the context of every call it decides, and its server
// interceptor the baggage it parsed once per header) costs no member lookup and no parsing.
// Decision always returns exactly what Lookup returns for the baggage's decision value.
//
// It takes no lock and allocates nothing. It is keyed by the identity of the baggage's
// member map: otel never changes a Baggage's map once built (every change copies it), so one
// map always carries one decision. Each of its slots holds a pointer into the map it
// remembers, tagged with that map's decision, and that pointer keeps the map alive: while a
// slot remembers a map, no other map can have its address, so a hit can never be another
// baggage's answer. A miss computes the decision and overwrites the slot.
//
// The zero Cache is not usable: build one with NewCache.
type Cache struct {
	channel string
	slots   [cacheSlots]unsafe.Pointer // atomic: into a baggage's map, + its tag; nil if empty
}

const (
	cacheSlots = 64
	tagNone    = 0 // the baggage carries no decision for the channel
	tagBlue    = 1
	tagGreen   = 2
	tagMask    = 7 // a map header is at least 8-byte aligned and larger than 8 bytes
)

// cacheable says whether baggage.Baggage is what Cache reads: a struct of one map and
// nothing else. If a new otel version changes that, Cache computes every decision (correct,
// only slower), and TestCacheReadsTheBaggageMap fails.
var cacheable = func() bool {
	t := reflect.TypeFor[baggage.Baggage]()
	return t.Kind() == reflect.Struct && t.NumField() == 1 &&
		t.Field(0).Type.Kind() == reflect.Map && t.Size() == unsafe.Sizeof(unsafe.Pointer(nil))
}()

// NewCache returns an empty Cache for channel.
func NewCache(channel string) *Cache { return &Cache{channel: channel} }

// Channel is the channel c looks decisions up for.
func (c *Cache) Channel() string { return c.channel }

// Decision returns the color b decides for c's channel: Lookup(b.Member(deploy.BaggageKey).Value(),
// channel).
func (c *Cache) Decision(b baggage.Baggage) (deploy.Color, bool) {
	if !cacheable {
		return Lookup(b.Member(deploy.BaggageKey).Value(), c.channel)
	}
	m := *(*unsafe.Pointer)(unsafe.Pointer(&b)) // the member map
	if m == nil {
		return "", false // no baggage: nothing to remember
	}
	h := uint64(uintptr(m)>>3) * 0x9E3779B97F4A7C15 >> (64 - 6) // Fibonacci hashing onto 64 slots
	slot := &c.slots[h]
	if e := atomic.LoadPointer(slot); uintptr(e)&^tagMask == uintptr(m) {
		return colorOf(uintptr(e) & tagMask)
	}
	color, ok := Lookup(b.Member(deploy.BaggageKey).Value(), c.channel)
	tag := uintptr(tagNone)
	switch {
	case !ok:
	case color == deploy.Blue:
		tag = tagBlue
	default:
		tag = tagGreen
	}
	atomic.StorePointer(slot, unsafe.Add(m, tag)) // within the map header: keeps the map alive
	return color, ok
}

func colorOf(tag uintptr) (deploy.Color, bool) {
	switch tag {
	case tagBlue:
		return deploy.Blue, true
	case tagGreen:
		return deploy.Green, true
	}
	return "", false
}
