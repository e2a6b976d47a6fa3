// Package dns is vxmesh's embedded DNS resolver, the server that answers at
// 127.0.0.11:53 inside every container namespace, as Docker's does.
//
// One Server holds the configuration, the counters and the upstream
// forwarder; the daemon opens a UDP socket and a TCP listener inside each
// container's namespace and hands them to Server.Serve together with the
// identity of that container (the asker). A query is answered from the
// Source when the Source knows the name for that asker (container names,
// aliases, names qualified by network, services, tasks.<service>, SRV, PTR
// for their addresses), with the TTL the Source gives; every other query is forwarded to the upstream servers
// from the caller's (the daemon's) own namespace, with a bounded timeout,
// retries across upstreams and a bound on the queries in flight.
//
// Over UDP, when the Source is also an AnswerSource, one loop per socket
// reads and answers in batches (recvmmsg/sendmmsg): plain queries for
// precomputed local names are answered from wire-format records without
// parsing or allocating, the answers of a batch to one client leave in one
// UDP_SEGMENT send where the kernel has it, and every other datagram goes
// on to the general path above, unchanged.
package dns

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

// ListenAddr is where the embedded resolver listens inside each
// namespace, over UDP and TCP.
const ListenAddr = "127.0.0.11:53"

// Defaults of Config.
const (
	DefaultTimeout     = 2 * time.Second
	DefaultMaxInflight = 1024
	// LocalTTL is the TTL of answers about containers: short, because
	// containers come and go and a stale cached address is worse than a
	// new query. Services carry their own (--dns-ttl).
	LocalTTL = 5
)

// maxUDPRead is the largest query the UDP listeners read.
const maxUDPRead = 4096

// Source is where the Server finds local records. Lookups are scoped by the
// asker, the identity the listener was opened with (the daemon uses the
// container name), so a name is local only for askers that share a network
// with it. Names are passed lower-cased and without the trailing dot.
// Implementations must be safe for concurrent use and fast: they run for
// every query. The Server never modifies what they return, so they may
// return slices they share.
type Source interface {
	// LookupName returns the records of name as asker sees it, and
	// whether the name is local at all. A local name without records of
	// the asked type is answered NOERROR with an empty answer; a name
	// that is not local is forwarded.
	LookupName(asker, name string) (Records, bool)
	// LookupAddr returns the names (without the trailing dot) of addr as
	// asker sees it, for PTR queries, and the TTL of those records in
	// seconds; no names means the query is forwarded.
	LookupAddr(asker string, addr netip.Addr) (names []string, ttl uint32)
	// Forwards reports whether asker's queries for names that are not
	// local may go to the upstreams. An asker that may not (a container
	// with no egress: Docker's internal networks) gets SERVFAIL for them,
	// as with no upstream, counted in Stats.NoEgress.
	Forwards(asker string) bool
}

// Records are the records of one local name, as one asker sees them.
type Records struct {
	// Addrs are the IPv4 addresses (A records), answered in a new
	// random order every time.
	Addrs []netip.Addr
	// SRV are the SRV records. An answer carrying them also carries the
	// A records of their targets that are local for the asker, as
	// additional records.
	SRV []SRV
	// TTL is the TTL of every record of the name, in seconds (RFC 2181
	// §5.2: one TTL per record set). Sources use LocalTTL unless they
	// were told otherwise.
	TTL uint32
}

// SRV is one SRV record (RFC 2782).
type SRV struct {
	Priority, Weight, Port uint16
	Target                 string // lower-case, without the trailing dot
}

// Config configures a Server. Zero values select the defaults.
type Config struct {
	// Upstreams receive the queries that are not local, in order of
	// preference. None means every such query gets SERVFAIL.
	Upstreams []netip.AddrPort
	// Timeout bounds a forwarded query from the first try to the last
	// (DefaultTimeout). Tries share it: a try that fails fast leaves its
	// time to the next.
	Timeout time.Duration
	// Attempts is how many tries a forwarded query gets across the
	// upstreams, in order, wrapping around (default: the number of
	// upstreams, at least 2).
	Attempts int
	// MaxInflight bounds the forwarded queries in flight; a query over it
	// gets SERVFAIL at once and is counted as overloaded
	// (DefaultMaxInflight).
	MaxInflight int
	// Logger receives debug messages about failing upstreams; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Server answers queries for any number of listeners. Its methods are safe
// for concurrent use.
type Server struct {
	cfg      Config
	src      Source
	log      *slog.Logger
	inflight atomic.Int64
	stats    counters
	// batches are the UDP loops' free recvmmsg/sendmmsg states: a loop
	// holds one only while it drains its socket.
	batches batchPool
	// noGSO keeps the UDP loops from sending answers with UDP_SEGMENT
	// (tests: the path of kernels without it).
	noGSO bool
}

// New returns a Server that answers from src and forwards to
// cfg.Upstreams.
func New(cfg Config, src Source) *Server {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = max(2, len(cfg.Upstreams))
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Upstreams = append([]netip.AddrPort(nil), cfg.Upstreams...)
	return &Server{cfg: cfg, src: src, log: cfg.Logger, batches: newBatchPool()}
}

// Upstreams returns the upstream servers the Server forwards to.
func (s *Server) Upstreams() []netip.AddrPort {
	return append([]netip.AddrPort(nil), s.cfg.Upstreams...)
}

// Listener is one asker's pair of sockets being served.
type Listener struct {
	cancel context.CancelFunc
	srvs   []*mdns.Server
	done   sync.WaitGroup
}

// Serve answers the queries arriving on pc (UDP) and ln (TCP), either of
// which may be nil, on behalf of asker, until the returned Listener is
// closed. It takes ownership of the sockets.
func (s *Server) Serve(asker string, pc net.PacketConn, ln net.Listener) *Listener {
	return s.serve(func(net.Addr) string { return asker }, asker, pc, ln)
}

// AskerFunc names the asker of a query from its source address; ""
// marks an unknown source, whose queries are only forwarded (no local
// name is answered to it).
type AskerFunc func(src netip.Addr) string

// ServeFunc is Serve for sockets shared by many askers (a network's
// gateway address): each query's asker is askerOf its source address.
func (s *Server) ServeFunc(askerOf AskerFunc, pc net.PacketConn, ln net.Listener) *Listener {
	return s.serve(func(a net.Addr) string {
		var ap netip.AddrPort
		switch a := a.(type) {
		case *net.UDPAddr:
			ap = a.AddrPort()
		case *net.TCPAddr:
			ap = a.AddrPort()
		default:
			return ""
		}
		return askerOf(ap.Addr().Unmap())
	}, "", pc, ln)
}

// serve serves pc and ln, each query on behalf of askerOf its source;
// fast names the one asker of the fast UDP loop ("" for none).
func (s *Server) serve(askerOf func(net.Addr) string, fast string, pc net.PacketConn, ln net.Listener) *Listener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{cancel: cancel}
	start := func(srv *mdns.Server, tcp bool) bool {
		srv.Handler = mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
			if resp := s.answer(ctx, askerOf(w.RemoteAddr()), req, tcp); resp != nil {
				w.WriteMsg(resp)
			}
		})
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		ended := make(chan struct{})
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			defer close(ended)
			srv.ActivateAndServe()
		}()
		select {
		case <-started:
			l.srvs = append(l.srvs, srv)
			return true
		case <-ended: // failed to start (and closed nothing): drop it
			return false
		}
	}
	if pc != nil {
		// The fast loop (if any) reads pc and hands the rest to general,
		// which the miekg server serves; it runs only alongside that
		// server, which closes the socket when it stops.
		general, run := pc, (func())(nil)
		if fast != "" {
			general, run = s.serveUDP(fast, pc)
		}
		if start(&mdns.Server{PacketConn: general, UDPSize: maxUDPRead}, false) && run != nil {
			l.done.Add(1)
			go func() {
				defer l.done.Done()
				run()
			}()
		}
	}
	if ln != nil {
		// No bound on the queries of one connection (the library's
		// default closes it after 128): a client that pipelines more
		// (RFC 7766 §6.2.1) would lose the ones in flight at the close.
		// An idle connection still ends after 8 s.
		start(&mdns.Server{Listener: ln, MaxTCPQueries: -1,
			IdleTimeout: func() time.Duration { return 8 * time.Second }}, true)
	}
	return l
}

// Close stops serving, aborts the listener's forwarded queries, closes its
// sockets and waits until its goroutines are gone.
func (l *Listener) Close() error {
	l.cancel()
	var errs []error
	for _, srv := range l.srvs {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, srv.ShutdownContext(ctx))
		cancel()
	}
	l.done.Wait()
	return errors.Join(errs...)
}

// answer returns the response to req from asker, or nil when there is
// none to send (req is itself a response). tcp tells the transport the
// query came on: over UDP, the response is truncated to what the client
// can take, over TCP to what one message can hold.
func (s *Server) answer(ctx context.Context, asker string, req *mdns.Msg, tcp bool) *mdns.Msg {
	if req.Response {
		return nil
	}
	s.stats.queries.Add(1)
	resp := s.resolve(ctx, asker, req, tcp)
	switch resp.Rcode {
	case mdns.RcodeNameError:
		s.stats.nxdomain.Add(1)
	case mdns.RcodeServerFailure:
		s.stats.servfail.Add(1)
	}
	if tcp {
		resp.Truncate(mdns.MaxMsgSize) // a service's SRV records can outgrow one message
	} else {
		resp.Truncate(udpSize(req))
	}
	return resp
}

// udpSize is the largest UDP response the client of req accepts.
func udpSize(req *mdns.Msg) int {
	if opt := req.IsEdns0(); opt != nil && opt.UDPSize() > mdns.MinMsgSize {
		return int(opt.UDPSize())
	}
	return mdns.MinMsgSize
}

func (s *Server) resolve(ctx context.Context, asker string, req *mdns.Msg, tcp bool) *mdns.Msg {
	if req.Opcode != mdns.OpcodeQuery {
		return reply(req, mdns.RcodeNotImplemented)
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		// RFC 6891 §6.1.3: only version 0 is implemented; the answer
		// carries an OPT of the version we do speak (reply adds it).
		return reply(req, mdns.RcodeBadVers)
	}
	if len(req.Question) != 1 {
		return reply(req, mdns.RcodeFormatError)
	}
	q := req.Question[0]
	if asker != "" && (q.Qclass == mdns.ClassINET || q.Qclass == mdns.ClassANY) {
		if resp := s.local(asker, req, q); resp != nil {
			s.stats.local.Add(1)
			return resp
		}
	}
	if asker != "" && !s.src.Forwards(asker) {
		s.stats.noEgress.Add(1)
		return reply(req, mdns.RcodeServerFailure)
	}
	return s.forward(ctx, req, tcp)
}

// reply is an empty response to req with rcode, keeping EDNS0.
func reply(req *mdns.Msg, rcode int) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	if len(req.Question) > 1 {
		m.Question = nil
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(maxUDPRead, opt.Do()) // DO copied: RFC 3225 §3
	}
	return m
}

// local answers q from the Source, or returns nil if the name is not
// local for asker.
func (s *Server) local(asker string, req *mdns.Msg, q mdns.Question) *mdns.Msg {
	name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
	if name == "" {
		return nil
	}
	if q.Qtype == mdns.TypePTR {
		addr, ok := reverseAddr(name)
		if !ok {
			return nil
		}
		names, ttl := s.src.LookupAddr(asker, addr)
		if len(names) == 0 {
			return nil
		}
		m := reply(req, mdns.RcodeSuccess)
		m.Authoritative = true
		for _, n := range names {
			m.Answer = append(m.Answer, &mdns.PTR{
				Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypePTR, Class: mdns.ClassINET, Ttl: ttl},
				Ptr: mdns.Fqdn(n),
			})
		}
		return m
	}
	rec, ok := s.src.LookupName(asker, name)
	if !ok {
		return nil
	}
	m := reply(req, mdns.RcodeSuccess)
	m.Authoritative = true
	if q.Qtype == mdns.TypeA || q.Qtype == mdns.TypeANY {
		m.Answer = appendA(m.Answer, q.Name, rec.Addrs, rec.TTL)
	}
	if q.Qtype == mdns.TypeSRV || q.Qtype == mdns.TypeANY {
		s.appendSRV(m, asker, q.Name, rec)
	}
	return m // a local name without records of the type: NOERROR, no answer
}

// appendA appends the IPv4 addresses of addrs as A records of name, in a
// random order (spreading clients over several addresses).
func appendA(rrs []mdns.RR, name string, addrs []netip.Addr, ttl uint32) []mdns.RR {
	for _, i := range rand.Perm(len(addrs)) {
		a := addrs[i]
		if !a.Is4() {
			continue
		}
		b := a.As4()
		rrs = append(rrs, &mdns.A{
			Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: ttl},
			A:   net.IP(b[:]),
		})
	}
	return rrs
}

// appendSRV appends rec's SRV records of name to m's answer and the A
// records of their local targets to its additional section.
func (s *Server) appendSRV(m *mdns.Msg, asker, name string, rec Records) {
	var seen []string
	for _, r := range rec.SRV {
		m.Answer = append(m.Answer, &mdns.SRV{
			Hdr:      mdns.RR_Header{Name: name, Rrtype: mdns.TypeSRV, Class: mdns.ClassINET, Ttl: rec.TTL},
			Priority: r.Priority, Weight: r.Weight, Port: r.Port, Target: mdns.Fqdn(r.Target),
		})
		if slices.Contains(seen, r.Target) {
			continue
		}
		seen = append(seen, r.Target)
		if t, ok := s.src.LookupName(asker, r.Target); ok {
			m.Extra = appendA(m.Extra, mdns.Fqdn(r.Target), t.Addrs, t.TTL)
		}
	}
}

// reverseAddr parses an IPv4 PTR name (d.c.b.a.in-addr.arpa).
func reverseAddr(name string) (netip.Addr, bool) {
	rest, ok := strings.CutSuffix(name, ".in-addr.arpa")
	if !ok {
		return netip.Addr{}, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(parts[3] + "." + parts[2] + "." + parts[1] + "." + parts[0])
	if err != nil || !a.Is4() {
		return netip.Addr{}, false
	}
	return a, true
}
