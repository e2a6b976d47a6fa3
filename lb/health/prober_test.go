package health

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// events collects a Prober's events.
type events struct {
	mu     sync.Mutex
	all    []Event
	latest map[string]Event
	ch     chan Event
}

func newEvents() *events {
	return &events{latest: map[string]Event{}, ch: make(chan Event, 1000)}
}

func (e *events) on(ev Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.latest[ev.Key] = ev
	e.mu.Unlock()
	e.ch <- ev
}

func (e *events) of(key string) []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Event
	for _, ev := range e.all {
		if ev.Key == key {
			out = append(out, ev)
		}
	}
	return out
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForf(t, func() string { return what }, cond)
}

// waitForf is waitFor with a failure message made at the time of failure.
func waitForf(t *testing.T, what func() string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what())
		}
		time.Sleep(5 * time.Millisecond) // polling
	}
}

// waitGoroutines waits until at most max goroutines run.
func waitGoroutines(t *testing.T, max int, what string) {
	t.Helper()
	waitForf(t, func() string {
		return fmt.Sprintf("%s: %d goroutines, want at most %d", what, runtime.NumGoroutine(), max)
	},
		func() bool { return runtime.NumGoroutine() <= max })
}

func statusOf(p *Prober, key string) (Status, bool) {
	for _, s := range p.Status() {
		if s.Key == key {
			return s, true
		}
	}
	return Status{}, false
}

// waitState waits until key's state is want and returns its status.
func waitState(t *testing.T, p *Prober, key string, want State) Status {
	t.Helper()
	var st Status
	waitForf(t, func() string { return fmt.Sprintf("%s not %s (status %+v)", key, want, st) }, func() bool {
		st, _ = statusOf(p, key)
		return st.State == want
	})
	return st
}

func newProber(t *testing.T) (*Prober, *events) {
	t.Helper()
	ev := newEvents()
	p := NewProber(ev.on)
	t.Cleanup(p.Close)
	return p, ev
}

func fast(k Kind, port uint16, path string) Spec {
	return Spec{Kind: k, Port: port, Path: path, Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond,
		Healthy: 2, Unhealthy: 3}
}

// roomy is fast with a timeout that reading maxResponse bytes fits in
// under the race detector on a loaded machine (100 ms did not: the
// answer that is too large then timed out instead).
func roomy(k Kind, port uint16, path string) Spec {
	s := fast(k, port, path)
	s.Interval, s.Timeout = time.Second, time.Second
	return s
}

// scripted is a DialFunc whose every call waits for the test's answer.
type scripted struct {
	calls chan chan error
	stop  chan struct{}
}

func newScripted(t *testing.T) *scripted {
	s := &scripted{calls: make(chan chan error), stop: make(chan struct{})}
	t.Cleanup(func() { close(s.stop) })
	return s
}

func (s *scripted) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	reply := make(chan error)
	select {
	case s.calls <- reply:
	case <-s.stop:
		return nil, context.Canceled
	}
	select {
	case err := <-reply:
		if err != nil {
			return nil, &net.OpError{Op: "dial", Net: network, Err: err}
		}
		c, other := net.Pipe()
		other.Close()
		return c, nil
	case <-s.stop:
		return nil, context.Canceled
	}
}

// next waits for the next check to start.
func (s *scripted) next(t *testing.T) chan error {
	t.Helper()
	select {
	case c := <-s.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no check for 10s")
		return nil
	}
}

// TestThresholds drives one target through scripted results: the first
// success makes a Starting backend healthy; only Unhealthy failures in a
// row make it unhealthy; only Healthy successes in a row bring it back;
// and each change is one event with the deciding check's reason.
func TestThresholds(t *testing.T) {
	refused := syscall.ECONNREFUSED
	type step struct {
		err   error
		want  State
		event bool
	}
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"starting-healthy-unhealthy-healthy", []step{
			{refused, Starting, false},
			{nil, Healthy, true},
			{refused, Healthy, false}, {refused, Healthy, false},
			{nil, Healthy, false}, // the run of failures starts again
			{refused, Healthy, false}, {refused, Healthy, false},
			{refused, Unhealthy, true},
			{nil, Unhealthy, false},
			{refused, Unhealthy, false}, // the run of successes starts again
			{nil, Unhealthy, false},
			{nil, Healthy, true},
		}},
		{"starting-unhealthy", []step{
			{refused, Starting, false}, {refused, Starting, false},
			{refused, Unhealthy, true},
			{nil, Unhealthy, false},
			{nil, Healthy, true},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, ev := newProber(t)
			s := newScripted(t)
			sp := fast(TCP, 80, "")
			sp.Interval = MinInterval
			sp.Timeout = MinInterval
			if err := p.SetTargets([]Target{{Key: "b1", Addr: loopback, Spec: sp, Dial: s.dial}}); err != nil {
				t.Fatal(err)
			}
			call := s.next(t)
			for i, st := range c.steps {
				call <- st.err
				call = s.next(t) // the previous result is recorded
				got, _ := statusOf(p, "b1")
				if got.State != st.want || got.Checks != uint64(i+1) {
					t.Fatalf("after check %d (%v): %s after %d checks, want %s", i+1, st.err, got.State, got.Checks, st.want)
				}
				wantReason := "connected"
				if st.err != nil {
					wantReason = "connection refused"
				}
				if got.Reason != wantReason {
					t.Errorf("after check %d: reason %q, want %q", i+1, got.Reason, wantReason)
				}
				if !st.event {
					if len(ev.ch) != 0 {
						t.Fatalf("after check %d: event %+v without a change", i+1, <-ev.ch)
					}
					continue
				}
				select {
				case e := <-ev.ch:
					if e != (Event{Key: "b1", State: st.want, Reason: wantReason}) {
						t.Fatalf("after check %d: event %+v, want %s (%s)", i+1, e, st.want, wantReason)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("after check %d: no event for the change to %s", i+1, st.want)
				}
			}
		})
	}
}

// servers are loopback servers for every outcome of a check.
type servers struct {
	accepting, refused, hanging uint16
	http                        *httptest.Server
	httpCode                    atomic.Int64
	httpReq                     atomic.Pointer[http.Request]
	streaming                   uint16 // HTTP 200 with an endless body
	bigHeader                   uint16 // an endless header
}

func port(t *testing.T, a net.Addr) uint16 {
	t.Helper()
	return uint16(a.(*net.TCPAddr).Port)
}

// serve runs handle for every connection accepted on a loopback listener.
func serve(t *testing.T, handle func(net.Conn)) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { handle(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return port(t, ln.Addr())
}

func newServers(t *testing.T) *servers {
	s := &servers{}
	s.accepting = serve(t, func(c net.Conn) { c.Close() })
	s.hanging = serve(t, func(c net.Conn) { io.Copy(io.Discard, c) }) // reads, never answers
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.refused = port(t, ln.Addr())
	ln.Close()
	s.httpCode.Store(200)
	s.http = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.httpReq.Store(r)
		w.WriteHeader(int(s.httpCode.Load()))
	}))
	t.Cleanup(s.http.Close)
	s.streaming = serve(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
		chunk := bytes.Repeat([]byte("x"), 8192)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	s.bigHeader = serve(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		for {
			if _, err := io.WriteString(c, "X-Pad: "+strings.Repeat("y", 1000)+"\r\n"); err != nil {
				return
			}
		}
	})
	return s
}

// TestProberLoopback checks real servers: an accepting port is healthy,
// a closed one refused, HTTP follows the status code (200 then 503 then
// 200 again) and gets GET path with the Host header, a server that never
// answers times out, and endless answers are read within a bound.
func TestProberLoopback(t *testing.T) {
	s := newServers(t)
	httpPort := port(t, s.http.Listener.Addr())
	p, ev := newProber(t)
	targets := []Target{
		{Key: "tcp-ok", Addr: loopback, Spec: fast(TCP, s.accepting, "")},
		{Key: "tcp-refused", Addr: loopback, Spec: fast(TCP, s.refused, "")},
		{Key: "http", Addr: loopback, Spec: fast(HTTP, httpPort, "/healthz?full=1")},
		{Key: "http-hang", Addr: loopback, Spec: fast(HTTP, s.hanging, "/")},
		{Key: "http-stream", Addr: loopback, Spec: fast(HTTP, s.streaming, "/")},
		{Key: "http-bighdr", Addr: loopback, Spec: roomy(HTTP, s.bigHeader, "/")},
	}
	if err := p.SetTargets(targets); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		key    string
		state  State
		reason string
	}{
		{"tcp-ok", Healthy, "connected"},
		{"tcp-refused", Unhealthy, "connection refused"},
		{"http", Healthy, "http 200"},
		{"http-hang", Unhealthy, "timeout"},
		{"http-stream", Healthy, "http 200"},
		{"http-bighdr", Unhealthy, "http header too large"},
	} {
		st := waitState(t, p, c.key, c.state)
		if st.Reason != c.reason {
			t.Errorf("%s: %s with reason %q, want %q", c.key, st.State, st.Reason, c.reason)
		}
		waitFor(t, c.key+": no event", func() bool { return len(ev.of(c.key)) > 0 })
		if got := ev.of(c.key); got[len(got)-1] != (Event{Key: c.key, State: c.state, Reason: c.reason}) {
			t.Errorf("%s: events %+v, want the last %s (%s)", c.key, got, c.state, c.reason)
		}
	}
	r := s.httpReq.Load()
	if r.Method != "GET" || r.RequestURI != "/healthz?full=1" || r.Host != fmt.Sprintf("127.0.0.1:%d", httpPort) {
		t.Errorf("request %s %s Host %s, want GET /healthz?full=1 Host 127.0.0.1:%d", r.Method, r.RequestURI, r.Host, httpPort)
	}
	// The endless body is cut at the bound: checks keep coming.
	first, _ := statusOf(p, "http-stream")
	waitFor(t, "endless body: checks stopped", func() bool {
		st, _ := statusOf(p, "http-stream")
		return st.Checks >= first.Checks+3 && st.State == Healthy
	})

	s.httpCode.Store(503)
	st := waitState(t, p, "http", Unhealthy)
	if st.Reason != "http 503" {
		t.Errorf("http after 503s: reason %q", st.Reason)
	}
	if st.Fails < 3 {
		t.Errorf("unhealthy after %d failed checks, want at least 3", st.Fails)
	}
	s.httpCode.Store(302) // a redirect counts as healthy
	waitState(t, p, "http", Healthy)
	want := []State{Healthy, Unhealthy, Healthy}
	waitFor(t, "http: events missing", func() bool { return len(ev.of("http")) >= len(want) })
	got := ev.of("http")
	if len(got) != len(want) {
		t.Fatalf("http events %+v, want states %v", got, want)
	}
	for i := range want {
		if got[i].State != want[i] {
			t.Errorf("http events %+v, want states %v", got, want)
		}
	}
}

// TestSetTargetsKeepsState: a target given again unchanged keeps its
// state, counts and events; one whose check changed keeps its state until
// the new check decides; a removed one is gone from Status.
func TestSetTargetsKeepsState(t *testing.T) {
	s := newServers(t)
	p, ev := newProber(t)
	// Dials are counted: a target kept running keeps its first Dial.
	var first, second atomic.Int64
	counting := func(n *atomic.Int64) DialFunc {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			n.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	}
	a := Target{Key: "a", Addr: loopback, Spec: fast(TCP, s.accepting, ""), Dial: counting(&first)}
	b := Target{Key: "b", Addr: loopback, Spec: fast(TCP, s.accepting, "")}
	if err := p.SetTargets([]Target{a, b}); err != nil {
		t.Fatal(err)
	}
	before := waitState(t, p, "a", Healthy)
	waitState(t, p, "b", Healthy)

	c := Target{Key: "c", Addr: loopback, Spec: fast(TCP, s.accepting, "")}
	a.Dial = counting(&second)
	if err := p.SetTargets([]Target{a, c}); err != nil {
		t.Fatal(err)
	}
	dials := first.Load()
	waitFor(t, "a's checks stopped after SetTargets", func() bool { return first.Load() >= dials+3 })
	if n := second.Load(); n != 0 {
		t.Errorf("a given again unchanged was restarted: its new Dial ran %d times", n)
	}
	after, _ := statusOf(p, "a")
	if after.State != Healthy || after.Since != before.Since || after.Checks < before.Checks {
		t.Errorf("a given again: %+v, was %+v", after, before)
	}
	if _, ok := statusOf(p, "b"); ok {
		t.Error("b removed but still in Status")
	}
	waitFor(t, "a not checked any more", func() bool {
		st, _ := statusOf(p, "a")
		return st.Checks > after.Checks
	})
	waitState(t, p, "c", Healthy)

	// A new check that fails: a stays healthy (no event) until Unhealthy
	// failures of the new check.
	a.Spec.Port = s.refused
	if err := p.SetTargets([]Target{a, c}); err != nil {
		t.Fatal(err)
	}
	if st, _ := statusOf(p, "a"); st.State != Healthy || st.Since != before.Since {
		t.Errorf("a with a new check: %+v, want still healthy since %v", st, before.Since)
	}
	st := waitState(t, p, "a", Unhealthy)
	if st.Reason != "connection refused" {
		t.Errorf("a: reason %q", st.Reason)
	}
	waitFor(t, "a: events missing", func() bool { return len(ev.of("a")) >= 2 })
	if got := ev.of("a"); len(got) != 2 || got[0].State != Healthy || got[1].State != Unhealthy {
		t.Errorf("a events %+v, want healthy then unhealthy", got)
	}
}

// TestSetTargetsRejects: bad targets are an error naming the target, and
// the running set is untouched.
func TestSetTargetsRejects(t *testing.T) {
	p, _ := newProber(t)
	ok := Target{Key: "ok", Addr: loopback, Spec: fast(TCP, 1, "")}
	if err := p.SetTargets([]Target{ok}); err != nil {
		t.Fatal(err)
	}
	bad := fast(TCP, 1, "")
	bad.Timeout = time.Hour
	for _, c := range []struct {
		ts   []Target
		want string
	}{
		{[]Target{ok, ok}, `health target "ok": key given twice`},
		{[]Target{{Addr: loopback, Spec: ok.Spec}}, "health target 127.0.0.1: empty key"},
		{[]Target{{Key: "x", Spec: ok.Spec}}, `health target "x": address "invalid IP"`},
		{[]Target{{Key: "x", Addr: loopback}}, `health target "x": health check "": kind 0`},
		{[]Target{{Key: "x", Addr: loopback, Spec: bad}}, `health target "x": health check "tcp:1 interval=100ms timeout=1h0m0s`},
	} {
		err := p.SetTargets(c.ts)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("SetTargets(%+v) = %v, want %q", c.ts, err, c.want)
		}
	}
	if st := p.Status(); len(st) != 1 || st[0].Key != "ok" {
		t.Errorf("after rejected calls: %+v, want only ok", st)
	}
	p.Close()
	if err := p.SetTargets([]Target{ok}); err == nil {
		t.Error("SetTargets after Close accepted")
	}
}

// TestNoGoroutineLeak: removing targets and closing the Prober end every
// goroutine it started, including checks stuck on servers that never
// answer; no event arrives after Close.
func TestNoGoroutineLeak(t *testing.T) {
	s := newServers(t)
	base := runtime.NumGoroutine()
	ev := newEvents()
	p := NewProber(ev.on)
	var ts []Target
	for i, port := range []uint16{s.accepting, s.refused, s.hanging, s.hanging, s.streaming} {
		kind := TCP
		if port == s.hanging || port == s.streaming {
			kind = HTTP
		}
		sp := fast(kind, port, "")
		if kind == HTTP {
			sp.Path = "/"
		}
		sp.Interval, sp.Timeout = time.Second, time.Second // checks still running when removed
		ts = append(ts, Target{Key: fmt.Sprint("t", i), Addr: loopback, Spec: sp})
	}
	if err := p.SetTargets(ts); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "hanging checks not started", func() bool {
		st, _ := statusOf(p, "t0")
		return st.Checks > 0 && runtime.NumGoroutine() >= base+len(ts)+1
	})
	if err := p.SetTargets(ts[:1]); err != nil {
		t.Fatal(err)
	}
	waitGoroutines(t, base+2, "removed targets still running") // the dispatcher and t0 stay
	if err := p.SetTargets(ts); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.Close()
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Close took %v with checks hanging: it waited for their timeout", d)
	}
	n := len(ev.ch)
	waitGoroutines(t, base, "after Close")
	if len(ev.ch) != n {
		t.Error("event after Close")
	}
	p.Close() // idempotent
}

// TestReason: errors become a few words on one line.
func TestReason(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, "connection refused"},
		{&net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}, "no route to host"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{&net.OpError{Op: "read", Err: fmt.Errorf("w: %w", errTimeoutLike{})}, "timeout"},
		{errors.New("line one\nline two"), "line one line two"},
		{errors.New(strings.Repeat("é", 100)), strings.Repeat("é", maxReason/2)},
	} {
		if got := reason(c.err); got != c.want {
			t.Errorf("reason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

type errTimeoutLike struct{}

func (errTimeoutLike) Error() string   { return "deadline" }
func (errTimeoutLike) Timeout() bool   { return true }
func (errTimeoutLike) Temporary() bool { return true }

// FuzzHTTPCheck: any answer bytes give a verdict with a short one-line
// reason; only a 2xx or 3xx status passes.
func FuzzHTTPCheck(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno",
		"HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"SSH-2.0-OpenSSH\r\n", "", "HTTP/1.1 99 x\r\n\r\n", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 70000),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, answer []byte) {
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(answer), io.Discard}
		ok, why := httpCheck(rw, "127.0.0.1:80", "/")
		if why == "" || len(why) > maxReason || strings.ContainsAny(why, "\r\n") {
			t.Fatalf("answer %q: reason %q", answer, why)
		}
		if ok && !strings.HasPrefix(why, "http 2") && !strings.HasPrefix(why, "http 3") {
			t.Fatalf("answer %q passed with %q", answer, why)
		}
	})
}

// TestCallbackMaySetTargets: the callback runs outside the Prober's lock,
// so a daemon that reapplies its desired state (SetTargets) on a health
// change does not deadlock.
func TestCallbackMaySetTargets(t *testing.T) {
	s := newServers(t)
	a := Target{Key: "a", Addr: loopback, Spec: fast(TCP, s.accepting, "")}
	b := Target{Key: "b", Addr: loopback, Spec: fast(TCP, s.accepting, "")}
	var p *Prober
	errs := make(chan error, 10)
	p = NewProber(func(ev Event) {
		if ev.Key == "a" && ev.State == Healthy {
			p.Status()
			errs <- p.SetTargets([]Target{a, b})
		}
	})
	defer p.Close()
	if err := p.SetTargets([]Target{a}); err != nil {
		t.Fatal(err)
	}
	waitState(t, p, "b", Healthy)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}
