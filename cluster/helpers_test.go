package cluster

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// logSink collects log records so tests can assert on them.
type logSink struct {
	mu   sync.Mutex
	msgs []string
}

func (s *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (s *logSink) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	s.mu.Lock()
	s.msgs = append(s.msgs, b.String())
	s.mu.Unlock()
	return nil
}
func (s *logSink) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *logSink) WithGroup(string) slog.Handler      { return s }

func (s *logSink) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// freePort returns a port free for both TCP and UDP on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", l.Addr().String())
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

type testNode struct {
	*Cluster
	port int
	logs *logSink
}

func (n *testNode) addr() string { return net.JoinHostPort("127.0.0.1", itoa(n.port)) }

func itoa(i int) string { return strconv.Itoa(i) }

func testConfig(name string, key []byte, port int, logs *logSink) Config {
	return Config{
		NodeName:          name,
		BindAddr:          netip.MustParseAddr("127.0.0.1"),
		GossipPort:        port,
		Key:               key,
		NodeGrace:         time.Second,
		Meta:              NodeMeta{DataAddr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(4789))},
		Logger:            slog.New(logs),
		ClaimTimeout:      5 * time.Second,
		ReconnectInterval: 500 * time.Millisecond,

		GossipInterval:      20 * time.Millisecond,
		ProbeInterval:       100 * time.Millisecond,
		ProbeTimeout:        50 * time.Millisecond,
		PushPullInterval:    300 * time.Millisecond,
		TCPTimeout:          time.Second,
		SuspicionMult:       2,
		GossipToTheDeadTime: 2 * time.Second,
	}
}

// startNode starts a node; tune, if given, adjusts its configuration.
func startNode(t *testing.T, name string, key []byte, port int, tune ...func(*Config)) *testNode {
	t.Helper()
	if port == 0 {
		port = freePort(t)
	}
	logs := &logSink{}
	cfg := testConfig(name, key, port, logs)
	for _, f := range tune {
		f(&cfg)
	}
	c, err := Start(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	for _, tb := range []struct {
		name string
		opt  TableOptions
	}{{"networks", TableOptions{}}, {"endpoints", TableOptions{NodeScoped: true}}} {
		if err := c.DefineTable(tb.name, tb.opt); err != nil {
			t.Fatal(err)
		}
	}
	n := &testNode{Cluster: c, port: port, logs: logs}
	t.Cleanup(func() { c.Close() })
	return n
}

// startCluster starts n nodes named n1..nN sharing key and joins them;
// tune, if given, adjusts every node's configuration.
func startCluster(t *testing.T, key []byte, count int, tune ...func(*Config)) []*testNode {
	t.Helper()
	var nodes []*testNode
	for i := 1; i <= count; i++ {
		n := startNode(t, "n"+itoa(i), key, 0, tune...)
		if i > 1 {
			// One join is one push/pull within TCPTimeout, which a
			// loaded machine can miss: join as the daemon's rejoin does.
			waitFor(t, 10*time.Second, "n"+itoa(i)+" joined", func() bool {
				_, err := n.Join([]string{nodes[0].addr()})
				return err == nil
			})
		}
		nodes = append(nodes, n)
	}
	// Probes and gossip of every node on a loaded machine (load 18 on
	// two cores) took over 10 s to agree.
	waitFor(t, 30*time.Second, "all members alive", func() bool {
		for _, n := range nodes {
			if countState(n.Members(), StateAlive) != count {
				return false
			}
		}
		return true
	})
	return nodes
}

func countState(ms []Member, state string) int {
	k := 0
	for _, m := range ms {
		if m.State == state {
			k++
		}
	}
	return k
}

func mustKey(t *testing.T) []byte {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// waitFor polls cond until it holds or the timeout expires.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
