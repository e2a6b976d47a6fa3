package dns

import (
	"context"
	"time"

	mdns "github.com/miekg/dns"
)

// forward sends req to the upstreams and returns their answer with req's
// ID: the first answer that is not SERVFAIL, REFUSED or NOTIMP (so an
// upstream NXDOMAIN is the client's NXDOMAIN), or SERVFAIL when every try
// failed or timed out. A truncated answer over UDP is retried over TCP when
// the client asked over TCP; a UDP client gets it truncated and retries
// over TCP itself. The query goes out unchanged but for its ID, so the
// client's EDNS0 options (buffer size, DO bit) reach the upstream.
func (s *Server) forward(ctx context.Context, req *mdns.Msg, tcp bool) *mdns.Msg {
	if len(s.cfg.Upstreams) == 0 {
		return reply(req, mdns.RcodeServerFailure)
	}
	if s.inflight.Add(1) > int64(s.cfg.MaxInflight) {
		s.inflight.Add(-1)
		s.stats.overloaded.Add(1)
		return reply(req, mdns.RcodeServerFailure)
	}
	defer s.inflight.Add(-1)
	s.stats.forwarded.Add(1)

	q := req.Copy()
	deadline := time.Now().Add(s.cfg.Timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	for i := 0; i < s.cfg.Attempts; i++ {
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			break
		}
		up := s.cfg.Upstreams[i%len(s.cfg.Upstreams)]
		// The tries left share the time left.
		per := left / time.Duration(s.cfg.Attempts-i)
		q.Id = mdns.Id()
		resp, err := s.exchange(ctx, "udp", up.String(), q, per)
		if err == nil && resp.Truncated && tcp {
			resp, err = s.exchange(ctx, "tcp", up.String(), q, time.Until(deadline))
		}
		if err != nil {
			s.stats.upstreamErrors.Add(1)
			s.log.Debug("dns upstream failed", "upstream", up, "name", q.Question[0].Name, "err", err)
			continue
		}
		switch resp.Rcode {
		case mdns.RcodeServerFailure, mdns.RcodeRefused, mdns.RcodeNotImplemented:
			s.stats.upstreamErrors.Add(1)
			s.log.Debug("dns upstream refused", "upstream", up, "name", q.Question[0].Name, "rcode", mdns.RcodeToString[resp.Rcode])
			continue
		}
		resp.Id = req.Id
		resp.RecursionAvailable = true // the recursion is done on the client's behalf
		return resp
	}
	return reply(req, mdns.RcodeServerFailure)
}

// exchange sends q to addr over network within timeout (and ctx), and
// records the round trip of an answer.
func (s *Server) exchange(ctx context.Context, network, addr string, q *mdns.Msg, timeout time.Duration) (*mdns.Msg, error) {
	c := &mdns.Client{Net: network, Timeout: timeout, UDPSize: mdns.MinMsgSize}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	conn, err := c.DialContext(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// The client only applies ctx's deadline; closing the socket is what
	// ends a read when the listener is closed meanwhile.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, q, conn)
	if err == nil {
		s.stats.latency.observe(time.Since(start))
	}
	return resp, err
}
