package dns

import (
	"sync/atomic"
	"time"
)

// latencyBounds are the upper bounds of the upstream latency histogram's
// buckets; a last bucket counts the slower answers.
var latencyBounds = [...]time.Duration{
	time.Millisecond, 5 * time.Millisecond, 25 * time.Millisecond,
	100 * time.Millisecond, 500 * time.Millisecond,
}

// Stats is a snapshot of a Server's counters.
type Stats struct {
	// Queries counts the queries received (responses are ignored).
	Queries uint64
	// Local counts the queries answered from the Source.
	Local uint64
	// Forwarded counts the queries sent on to the upstreams.
	Forwarded uint64
	// NXDomain and ServFail count the answers with that rcode, local or
	// forwarded.
	NXDomain uint64
	ServFail uint64
	// Overloaded counts the queries answered SERVFAIL because
	// Config.MaxInflight forwarded queries were already in flight.
	Overloaded uint64
	// NoEgress counts the queries for names that are not local answered
	// SERVFAIL because their asker may not reach outside (Source.Forwards).
	NoEgress uint64
	// UpstreamErrors counts the tries that failed: timeouts, network
	// errors, and SERVFAIL, REFUSED or NOTIMP from an upstream.
	UpstreamErrors uint64
	// Inflight is the number of forwarded queries in flight now.
	Inflight int64
	// Coalesced counts the local UDP answers that left in another
	// answer's UDP_SEGMENT send to the same client (the sends saved).
	Coalesced uint64
	// Upstream is the round trip of the upstreams' answers.
	Upstream Latency
}

// Latency summarizes round-trip times.
type Latency struct {
	Count uint64
	Sum   time.Duration
	Max   time.Duration
	// Buckets[i] counts the round trips up to Bounds[i]; the last bucket,
	// one more than Bounds, counts the slower ones.
	Bounds  []time.Duration
	Buckets []uint64
}

type counters struct {
	queries, local, forwarded, nxdomain, servfail, overloaded, upstreamErrors, noEgress atomic.Uint64
	latency                                                                             latency
	// coalesced counts the local UDP answers that rode in another
	// answer's UDP_SEGMENT send (the sends saved).
	coalesced atomic.Uint64
}

type latency struct {
	count, sum, max atomic.Uint64 // sum and max in nanoseconds
	buckets         [len(latencyBounds) + 1]atomic.Uint64
}

func (l *latency) observe(d time.Duration) {
	l.count.Add(1)
	l.sum.Add(uint64(d))
	for {
		m := l.max.Load()
		if uint64(d) <= m || l.max.CompareAndSwap(m, uint64(d)) {
			break
		}
	}
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	l.buckets[i].Add(1)
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	st := Stats{
		Queries: c.queries.Load(), Local: c.local.Load(), Forwarded: c.forwarded.Load(),
		NXDomain: c.nxdomain.Load(), ServFail: c.servfail.Load(), Overloaded: c.overloaded.Load(), NoEgress: c.noEgress.Load(),
		UpstreamErrors: c.upstreamErrors.Load(), Inflight: s.inflight.Load(), Coalesced: c.coalesced.Load(),
		Upstream: Latency{
			Count: c.latency.count.Load(), Sum: time.Duration(c.latency.sum.Load()),
			Max: time.Duration(c.latency.max.Load()), Bounds: append([]time.Duration(nil), latencyBounds[:]...),
		},
	}
	for i := range c.latency.buckets {
		st.Upstream.Buckets = append(st.Upstream.Buckets, c.latency.buckets[i].Load())
	}
	return st
}
