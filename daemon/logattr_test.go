package daemon

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/tunnel"
)

// text returns what the daemon has logged so far.
func (l *testLog) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestClusterLogLinesNameTheirComponentOnce: the cluster's log lines
// carry component=cluster once, not twice (the daemon tagged the logger it
// handed the cluster, which tags its own).
func TestClusterLogLinesNameTheirComponentOnce(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	addr1, addr2 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	logs := &testLog{}
	dir1, dir2 := t.TempDir(), t.TempDir()
	cfg := nodeConfig(t, mem, "h1", addr1, newFakeSandbox(), dir1)
	cfg.Logger = logs.logger()
	h1 := startNode(t, cfg)
	key, _ := readFile(dir1 + "/cluster.key")
	writeFile(t, dir2+"/cluster.key", key)
	startNode(t, nodeConfig(t, mem, "h2", addr2, newFakeSandbox(), dir2, h1.cfg.Advertise.String()+":"+fmt.Sprint(h1.cfg.GossipPort)))
	deadline := time.Now().Add(10 * time.Second)
	var line string
	for line == "" && time.Now().Before(deadline) {
		for _, l := range strings.Split(logs.text(), "\n") {
			if strings.Contains(l, `msg="node joined"`) {
				line = l
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if line == "" {
		t.Fatalf("h1 logged no node joined within 10s:\n%s", logs.text())
	}
	if n := strings.Count(line, "component=cluster"); n != 1 {
		t.Errorf("component=cluster %d times in %q, want once", n, line)
	}
}

// TestMountTemplateLogHasNoNilError: on a host whose root mount is not
// shared the daemon says so, without an "err=<nil>" that reads like a
// failure.
func TestMountTemplateLogHasNoNilError(t *testing.T) {
	logs := &testLog{}
	sb := &templateSandbox{fakeSandbox: newFakeSandbox(), rootShared: false}
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, t.TempDir())
	cfg.Logger = logs.logger()
	startNode(t, cfg).Close()
	var line string
	for _, l := range strings.Split(logs.text(), "\n") {
		if strings.Contains(l, "root mount is not shared") {
			line = l
		}
	}
	if line == "" || strings.Contains(line, "err=") {
		t.Errorf("log line about the unshared root mount: %q; want one, without err=", line)
	}
}
