package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

// env is one test's testbed with a running daemon on host h1.
type env struct {
	t  *testing.T
	tb *testbed.Testbed
	h  *testbed.Host
}

// skipUnlessReady skips (or, with testenv.RequireEnv=1, fails) when the
// machine cannot run end-to-end tests.
func skipUnlessReady(t *testing.T) {
	t.Helper()
	if suite.stopping.Load() {
		t.Skip("interrupted")
	}
	if suite.skipReason == "" {
		return
	}
	if testenv.Required() {
		t.Fatalf("e2e required but cannot run: %s", suite.skipReason)
	}
	t.Skip(suite.skipReason)
}

// newEnv builds a one-host testbed and starts its daemon. Everything is
// removed when the test ends; on failure the daemon's log tail is logged.
func newEnv(t *testing.T) *env {
	t.Helper()
	e := newTestbed(t, 1)[0]
	if err := e.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	return e
}

// newCluster builds an n-host testbed whose daemons share a cluster key,
// with flags added to every daemon's arguments, starts them (h2... join
// h1) and waits until every host's `node ls` shows all of them alive. It
// returns one env per host.
func newCluster(t *testing.T, n int, flags ...string) []*env {
	t.Helper()
	es := newTestbed(t, n, flags...)
	if err := es[0].tb.StartDaemons(); err != nil {
		t.Fatal(err)
	}
	return es
}

// newTestbed builds an n-host testbed without starting daemons and returns
// one env per host. Everything is removed when the test ends; on failure
// the daemons' log tails are logged.
func newTestbed(t *testing.T, n int, flags ...string) []*env {
	t.Helper()
	skipUnlessReady(t)
	h := fnv.New32a()
	h.Write([]byte(t.Name()))
	prefix := fmt.Sprintf("%s%04x-", suite.prefix, h.Sum32()&0xffff)
	tb, err := testbed.New(testbed.Options{Hosts: n, Binary: suite.bin, Prefix: prefix, DaemonFlags: flags})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range tb.Hosts {
				t.Logf("daemon log of %s (%s):\n%s", h.Name, h.LogFile, h.LogTail(40))
			}
		}
		if err := tb.Close(); err != nil {
			t.Errorf("testbed close: %v", err)
		}
		if left, _ := testbed.ListNetns(prefix); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	es := make([]*env, n)
	for i, h := range tb.Hosts {
		es[i] = &env{t: t, tb: tb, h: h}
	}
	return es
}

// cli runs a vxmesh command that must succeed and returns its stdout.
func (e *env) cli(args ...string) string {
	e.t.Helper()
	out, err := e.h.CLI(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// json runs a state command with --format json into v.
func (e *env) json(v any, args ...string) {
	e.t.Helper()
	if err := e.h.CLIJSON(v, args...); err != nil {
		e.t.Fatal(err)
	}
}

// cliFails runs a command that must fail with one line on stderr that
// mentions every string in want (case-insensitive); it returns the error.
func (e *env) cliFails(want []string, args ...string) *testbed.CLIError {
	e.t.Helper()
	out, err := e.h.CLI(args...)
	if err == nil {
		e.t.Fatalf("vxmesh %s succeeded, want an error; stdout: %q", strings.Join(args, " "), out)
	}
	var ce *testbed.CLIError
	if !errors.As(err, &ce) {
		e.t.Fatalf("vxmesh %s: %v", strings.Join(args, " "), err)
	}
	if ce.ExitCode <= 0 {
		e.t.Errorf("vxmesh %s: exit code %d, want > 0", strings.Join(args, " "), ce.ExitCode)
	}
	msg := strings.TrimRight(ce.Stderr, "\n")
	if msg == "" || strings.Contains(msg, "\n") {
		e.t.Errorf("vxmesh %s: want one error line on stderr, got %q", strings.Join(args, " "), ce.Stderr)
	}
	for _, w := range want {
		if !strings.Contains(strings.ToLower(msg), strings.ToLower(w)) {
			e.t.Errorf("vxmesh %s: error %q does not mention %q", strings.Join(args, " "), msg, w)
		}
	}
	return ce
}

func (e *env) network(name, subnet string, extra ...string) {
	e.t.Helper()
	e.cli(append([]string{"network", "create", name, "--subnet", subnet}, extra...)...)
}

// run starts a detached container running sleep.
func (e *env) run(name, network string, extra ...string) {
	e.t.Helper()
	args := append([]string{"run", "-d", "--network", network, "--name", name}, extra...)
	e.cli(append(args, "--", "sleep", "infinity")...)
}

func (e *env) endpoints() []api.Endpoint {
	e.t.Helper()
	var eps []api.Endpoint
	e.json(&eps, "endpoint", "ls")
	return eps
}

// endpoint returns the endpoint named name (fatal if missing).
func (e *env) endpoint(name string) api.Endpoint {
	e.t.Helper()
	for _, ep := range e.endpoints() {
		if ep.Name == name {
			return ep
		}
	}
	e.t.Fatalf("endpoint ls has no %q", name)
	return api.Endpoint{}
}

func (e *env) hasEndpoint(name string) bool {
	e.t.Helper()
	return slices.ContainsFunc(e.endpoints(), func(ep api.Endpoint) bool { return ep.Name == name })
}

func (e *env) containers() []api.Container {
	e.t.Helper()
	var cs []api.Container
	e.json(&cs, "ps")
	return cs
}

func (e *env) container(name string) (api.Container, bool) {
	e.t.Helper()
	for _, c := range e.containers() {
		if c.Name == name {
			return c, true
		}
	}
	return api.Container{}, false
}

func (e *env) networkNames() []string {
	e.t.Helper()
	var ns []api.Network
	e.json(&ns, "network", "ls")
	var names []string
	for _, n := range ns {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	return names
}

// ip returns an endpoint's address without a prefix length.
func (e *env) ip(name string) string {
	e.t.Helper()
	return addrOnly(e.endpoint(name).IP)
}

func addrOnly(s string) string {
	a, _, _ := strings.Cut(s, "/")
	return a
}

// pingOnce runs one ping from a container and reports whether it got a reply.
func (e *env) pingOnce(from, to string) error {
	_, err := e.h.Exec(from, "ping", "-c", "1", "-W", "1", to)
	return err
}

// mustPing waits until from reaches to (ARP and port setup may take a moment).
func (e *env) mustPing(from, to string) {
	e.t.Helper()
	eventually(e.t, 15*time.Second, func() error { return e.pingOnce(from, to) },
		"%s cannot ping %s", from, to)
}

// mustNotPing checks that from gets no reply from to.
func (e *env) mustNotPing(from, to string) {
	e.t.Helper()
	if out, err := e.h.Exec(from, "ping", "-c", "3", "-i", "0.2", "-W", "1", to); err == nil {
		e.t.Fatalf("%s can ping %s, want no reply:\n%s", from, to, out)
	}
}

// eventually polls f until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, f func() error, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf(format+" (after %v): %v", append(args, timeout, err)...)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// link is the part of `ip -j link/addr show` the tests look at.
type link struct {
	IfIndex   int    `json:"ifindex"`
	IfName    string `json:"ifname"`
	MTU       int    `json:"mtu"`
	Address   string `json:"address"`
	OperState string `json:"operstate"`
	Stats64   struct {
		RX struct {
			Packets uint64 `json:"packets"`
		} `json:"rx"`
	} `json:"stats64"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
	} `json:"addr_info"`
}

// linkIn describes interface ifname in the namespace at netnsPath.
func linkIn(t *testing.T, netnsPath, ifname string) (link, error) {
	t.Helper()
	out, err := testbed.InNetns(context.Background(), netnsPath, "ip", "-j", "-s", "addr", "show", "dev", ifname)
	if err != nil {
		return link{}, err
	}
	var ls []link
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		return link{}, fmt.Errorf("ip -j addr: %w", err)
	}
	if len(ls) != 1 {
		return link{}, fmt.Errorf("no %s in %s", ifname, netnsPath)
	}
	// `ip -s addr` has no stats; take them from `ip -s link`.
	out, err = testbed.InNetns(context.Background(), netnsPath, "ip", "-j", "-s", "link", "show", "dev", ifname)
	if err == nil {
		var st []link
		if json.Unmarshal([]byte(out), &st) == nil && len(st) == 1 {
			ls[0].Stats64 = st[0].Stats64
		}
	}
	return ls[0], nil
}

func (l link) ipv4() string {
	for _, a := range l.AddrInfo {
		if a.Family == "inet" {
			return fmt.Sprintf("%s/%d", a.Local, a.PrefixLen)
		}
	}
	return ""
}

// defaultGateway returns the default route's gateway in a namespace.
func defaultGateway(t *testing.T, netnsPath string) string {
	t.Helper()
	out, err := testbed.InNetns(context.Background(), netnsPath, "ip", "-j", "-4", "route", "show", "default")
	if err != nil {
		t.Fatal(err)
	}
	var rs []struct {
		Gateway string `json:"gateway"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs) == 0 {
		return ""
	}
	return rs[0].Gateway
}

// netnsID returns the "net:[inode]" identity of a process's namespace.
func netnsID(pid int) (string, error) {
	return os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// bgProc is a process running in the background for one test.
type bgProc struct {
	cmd  *exec.Cmd
	out  syncBuffer // stdout and stderr
	done chan struct{}
	err  error // valid after done is closed
}

// startBackground starts cmd with its output collected (unless it has
// its own), SIGKILL on our
// death, and kills it when the test ends.
func startBackground(t *testing.T, cmd *exec.Cmd) *bgProc {
	t.Helper()
	p := &bgProc{cmd: cmd, done: make(chan struct{})}
	if cmd.Stdout == nil && cmd.Stderr == nil {
		cmd.Stdout, cmd.Stderr = &p.out, &p.out
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

// wait waits up to timeout for the process to exit and returns its error.
func (p *bgProc) wait(timeout time.Duration) (exited bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(timeout):
		return false, nil
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a concurrent reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// dropsMatching sums drop counters whose reason contains all of words
// (case-insensitive, ignoring '_', '-' and spaces), over networks and ports.
func dropsMatching(st api.Stats, network string, words ...string) uint64 {
	match := func(reason string) bool {
		r := strings.NewReplacer("_", "", "-", "", " ", "").Replace(strings.ToLower(reason))
		for _, w := range words {
			if !strings.Contains(r, w) {
				return false
			}
		}
		return true
	}
	var n uint64
	for _, ns := range st.Networks {
		if ns.Network != network {
			continue
		}
		for k, v := range ns.Drops {
			if match(k) {
				n += v
			}
		}
		for _, p := range ns.Ports {
			for k, v := range p.Drops {
				if match(k) {
					n += v
				}
			}
		}
	}
	return n
}
