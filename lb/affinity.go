package lb

import (
	"encoding/binary"
	"sync"
)

// DefaultAffinityMax is the default number of client-IP affinity slots.
const DefaultAffinityMax = 65536

// affWays is the associativity of the affinity table: a key lives in one
// of affWays slots of its set; a full set replaces its oldest slot.
const affWays = 4

// affinity remembers, per (network, VIP, client IP), the backend of the
// client's last new connection and when. It is a fixed, set-associative
// array: bounded, no allocation, oldest-first replacement.
type affinity struct {
	locks [Shards]sync.Mutex
	slots []affSlot
	sets  uint32
	seed  uint64
}

type affSlot struct {
	net     uint32
	vip     [4]byte
	client  [4]byte
	backend [4]byte
	at      int64 // 0: empty
}

func newAffinity(n int) *affinity {
	if n <= 0 {
		n = DefaultAffinityMax
	}
	sets := 1
	for sets*affWays < n {
		sets <<= 1
	}
	return &affinity{slots: make([]affSlot, sets*affWays), sets: uint32(sets), seed: 0x2545f4914f6cdd1d}
}

func (a *affinity) set(net uint32, vip, client [4]byte) uint32 {
	h := mix64(a.seed ^ uint64(net)<<32 ^ uint64(binary.BigEndian.Uint32(vip[:]))<<16 ^ uint64(binary.BigEndian.Uint32(client[:])))
	return uint32(h) & (a.sets - 1)
}

// get returns the backend remembered for the key if it was stored less
// than ttl before now.
func (a *affinity) get(net uint32, vip, client [4]byte, now, ttl int64) ([4]byte, bool) {
	set := a.set(net, vip, client)
	mu := &a.locks[set%Shards]
	mu.Lock()
	defer mu.Unlock()
	for _, s := range a.slots[set*affWays : (set+1)*affWays] {
		if s.at != 0 && s.net == net && s.vip == vip && s.client == client {
			return s.backend, now-s.at < ttl
		}
	}
	return [4]byte{}, false
}

// put stores backend for the key at now.
func (a *affinity) put(net uint32, vip, client, backend [4]byte, now int64) {
	set := a.set(net, vip, client)
	mu := &a.locks[set%Shards]
	mu.Lock()
	defer mu.Unlock()
	ways := a.slots[set*affWays : (set+1)*affWays]
	victim := 0
	for i := range ways {
		s := &ways[i]
		if s.at != 0 && s.net == net && s.vip == vip && s.client == client {
			victim = i
			break
		}
		if ways[i].at < ways[victim].at {
			victim = i
		}
	}
	ways[victim] = affSlot{net: net, vip: vip, client: client, backend: backend, at: now}
}
