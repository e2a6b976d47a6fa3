// Package testbed builds a small cluster of "hosts" on one machine: every
// host is a network namespace with a veth into a shared underlay namespace
// holding a Linux bridge, and each host can run its own vxmesh daemon.
//
// It is used by the end-to-end tests, the benchmark harness and `vxmesh
// demo`. Everything it creates is named with Options.Prefix, so parallel
// runs never collide and Cleanup can remove the leftovers of a run that was
// interrupted. It needs root, iproute2 (ip) and util-linux (nsenter).
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// NetnsDir is where iproute2 keeps named network namespaces.
const NetnsDir = "/run/netns"

// DefaultReadyTimeout bounds how long StartDaemon waits for the daemon's API.
const DefaultReadyTimeout = 20 * time.Second

// Options configure a Testbed.
type Options struct {
	// Hosts is the number of hosts (at least 1).
	Hosts int
	// Binary is the vxmesh binary the daemons and CLI calls run.
	// It may be empty if no daemon is started.
	Binary string
	// Prefix starts the name of every namespace the testbed or its daemons
	// create. Empty means a random "vxtb<hex>-". Keep it short: it becomes
	// part of network namespace names.
	Prefix string
	// Dir holds sockets, state directories and daemon logs. Empty means a
	// new temporary directory that Close removes; a given Dir is kept.
	Dir string
	// ReadyTimeout bounds StartDaemon's wait; zero means DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// DaemonFlags are appended to every host's daemon arguments (each
	// Host.Flags starts as a copy), e.g. "--node-grace", "3s".
	DaemonFlags []string
}

// Testbed is a set of hosts on one underlay bridge.
type Testbed struct {
	// Prefix is the name prefix of everything the testbed created.
	Prefix string
	// Dir holds the hosts' sockets, state and logs.
	Dir string
	// Underlay is the name of the namespace holding the underlay bridge.
	Underlay string
	// Hosts are the hosts, named h1, h2, ...
	Hosts []*Host
	// KeyFile is the cluster key shared by every host's daemon (base64,
	// mode 0600), made by New as a user would with `vxmesh keygen`.
	KeyFile string

	binary       string
	ownDir       bool
	readyTimeout time.Duration
	subnet       int // third octet of the underlay 192.168.X.0/24
	peers        int // underlay peers made so far
}

// New builds the underlay namespace with its bridge and opts.Hosts host
// namespaces. On error everything already made is removed.
func New(opts Options) (tb *Testbed, err error) {
	if opts.Hosts < 1 {
		return nil, fmt.Errorf("testbed: need at least 1 host, got %d", opts.Hosts)
	}
	if opts.Hosts > 250 {
		return nil, fmt.Errorf("testbed: at most 250 hosts, got %d", opts.Hosts)
	}
	if err := CheckPrereqs(); err != nil {
		return nil, err
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = "vxtb" + RandomID(2) + "-"
	}
	if strings.ContainsAny(prefix, "/ \t\n") {
		return nil, fmt.Errorf("testbed: prefix %q must not contain '/' or spaces", prefix)
	}
	tb = &Testbed{
		Prefix:       prefix,
		Underlay:     prefix + "ul",
		binary:       opts.Binary,
		readyTimeout: opts.ReadyTimeout,
	}
	if tb.readyTimeout <= 0 {
		tb.readyTimeout = DefaultReadyTimeout
	}
	if opts.Dir == "" {
		// Unix socket paths are limited to 108 bytes: keep Dir short.
		d, err := os.MkdirTemp("", prefix)
		if err != nil {
			return nil, fmt.Errorf("testbed: %w", err)
		}
		tb.Dir, tb.ownDir = d, true
	} else {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("testbed: %w", err)
		}
		tb.Dir = opts.Dir
	}
	defer func() {
		if err != nil {
			_ = tb.Close()
			tb = nil
		}
	}()

	k := subnetOctet(prefix)
	if err := ip("netns", "add", tb.Underlay); err != nil {
		return tb, err
	}
	if err := ipIn(tb.Underlay, "link", "set", "lo", "up"); err != nil {
		return tb, err
	}
	if err := ipIn(tb.Underlay, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return tb, err
	}
	if err := ipIn(tb.Underlay, "link", "set", "br0", "mtu", "1500", "up"); err != nil {
		return tb, err
	}
	tb.subnet = k
	tb.KeyFile = filepath.Join(tb.Dir, "cluster.key")
	if err := WriteKeyFile(tb.KeyFile); err != nil {
		return tb, err
	}
	for i := 1; i <= opts.Hosts; i++ {
		h := tb.newHost(i, opts.DaemonFlags)
		tb.Hosts = append(tb.Hosts, h)
		if err := h.build(); err != nil {
			return tb, err
		}
	}
	return tb, nil
}

// newHost describes host number i (h<i>, underlay address .i); it makes
// nothing. Hosts after the first join the first one.
func (tb *Testbed) newHost(i int, flags []string) *Host {
	h := &Host{
		tb:      tb,
		Name:    fmt.Sprintf("h%d", i),
		KeyFile: tb.KeyFile,
		Flags:   append([]string(nil), flags...),
	}
	h.Netns = tb.Prefix + h.Name
	h.NetnsPath = filepath.Join(NetnsDir, h.Netns)
	h.Addr = tb.underlayAddr(i)
	h.Dir = filepath.Join(tb.Dir, h.Name)
	h.Socket = filepath.Join(h.Dir, "vxmesh.sock")
	h.StateDir = filepath.Join(h.Dir, "state")
	h.LogFile = filepath.Join(h.Dir, "daemon.log")
	h.ContainerPrefix = tb.Prefix + h.Name + "-"
	if i > 1 {
		h.Join = []string{tb.underlayAddr(1)}
	}
	return h
}

// underlayAddr returns the underlay address with last octet i.
func (tb *Testbed) underlayAddr(i int) string {
	return fmt.Sprintf("192.168.%d.%d", tb.subnet, i)
}

// WriteKeyFile writes a new random cluster key to path in the form `vxmesh
// keygen` prints (standard base64 of 32 bytes), with mode 0600.
func WriteKeyFile(path string) error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return fmt.Errorf("testbed: cluster key: %w", err)
	}
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
		return fmt.Errorf("testbed: cluster key: %w", err)
	}
	return nil
}

// UnderlayPeer is a namespace on the underlay bridge that runs no vxmesh
// daemon, e.g. an external RFC 7348 VTEP.
type UnderlayPeer struct {
	// Netns is the namespace's name, NetnsPath its bind mount.
	Netns, NetnsPath string
	// Addr is its underlay address on eth0 (/24, MTU 1500).
	Addr string
}

// AddUnderlayPeer creates a namespace named NetnsName(name) with an eth0 on
// the underlay bridge, addressed after the hosts (.200, .201, ...). Close
// removes it.
func (tb *Testbed) AddUnderlayPeer(name string) (*UnderlayPeer, error) {
	if tb.peers >= 50 {
		return nil, fmt.Errorf("testbed: at most 50 underlay peers")
	}
	tb.peers++
	p := &UnderlayPeer{Netns: tb.NetnsName(name), Addr: tb.underlayAddr(199 + tb.peers)}
	p.NetnsPath = filepath.Join(NetnsDir, p.Netns)
	// The bridge port is named after the peer's number: "p<N>" cannot
	// clash with the hosts' "h<N>".
	port := fmt.Sprintf("p%d", tb.peers)
	if err := attachUnderlay(tb.Underlay, p.Netns, port, p.Addr); err != nil {
		return nil, fmt.Errorf("testbed: underlay peer %s: %w", name, err)
	}
	return p, nil
}

// attachUnderlay creates netns ns with lo up and an eth0 (addr/24, MTU
// 1500) whose veth peer, named port, is a port of the underlay bridge.
func attachUnderlay(underlay, ns, port, addr string) error {
	steps := [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		// Both ends are made inside namespaces, so nothing appears in the
		// caller's namespace even for a moment.
		{"-n", underlay, "link", "add", port, "mtu", "1500", "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", underlay, "link", "set", port, "master", "br0", "up"},
		{"-n", ns, "link", "set", "eth0", "mtu", "1500", "up"},
		{"-n", ns, "addr", "add", addr + "/24", "dev", "eth0"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	return nil
}

// Host returns the host named name (h1, h2, ...) or nil.
func (tb *Testbed) Host(name string) *Host {
	for _, h := range tb.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// NetnsName returns a namespace name under the testbed's prefix for
// namespaces a caller makes itself ("x-" keeps them apart from hosts and
// containers); Close removes them.
func (tb *Testbed) NetnsName(name string) string {
	return tb.Prefix + "x-" + name
}

// AddNetns creates an extra named namespace (lo up) under the prefix, as a
// user would with `ip netns add`, and returns its path.
func (tb *Testbed) AddNetns(name string) (string, error) {
	n := tb.NetnsName(name)
	if err := ip("netns", "add", n); err != nil {
		return "", err
	}
	if err := ipIn(n, "link", "set", "lo", "up"); err != nil {
		return "", err
	}
	return filepath.Join(NetnsDir, n), nil
}

// Close stops every daemon, kills all processes in namespaces under the
// prefix, deletes those namespaces and, if the testbed made it, Dir. It is
// safe to call more than once.
func (tb *Testbed) Close() error {
	var errs []error
	for _, h := range tb.Hosts {
		if h.cmd != nil {
			// A clean stop first: the daemon may want to release things.
			if err := h.stop(syscall.SIGTERM, 5*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := Cleanup(tb.Prefix); err != nil {
		errs = append(errs, err)
	}
	if tb.ownDir && tb.Dir != "" {
		if err := os.RemoveAll(tb.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Cleanup kills every process inside, and deletes, each named network
// namespace whose name starts with prefix. It is what Close does after
// stopping the daemons, and what a signal handler calls to undo an
// interrupted run.
func Cleanup(prefix string) error {
	if prefix == "" {
		return errors.New("testbed: refusing to clean up an empty prefix")
	}
	names, err := ListNetns(prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		killNetnsPids(n)
	}
	for _, n := range names {
		if err := deleteNetns(n); err != nil {
			errs = append(errs, err)
		}
	}
	// The daemon writes /etc/netns/NAME/resolv.conf for the containers it
	// makes (for `ip netns exec` users); namespaces deleted here, not by
	// `vxmesh rm`, leave those behind.
	etc, _ := filepath.Glob(filepath.Join(NetnsEtcDir, prefix+"*"))
	for _, d := range etc {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("testbed: %w", err))
		}
	}
	return errors.Join(errs...)
}

// NetnsEtcDir holds per-namespace configuration files that `ip netns exec`
// bind-mounts over /etc.
const NetnsEtcDir = "/etc/netns"

// ListNetns returns the named network namespaces starting with prefix.
func ListNetns(prefix string) ([]string, error) {
	ents, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// NetnsExists reports whether the named network namespace exists.
func NetnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(NetnsDir, name))
	return err == nil
}

func killNetnsPids(name string) {
	// Processes may fork while we kill; a few rounds catch the children.
	for range 5 {
		out, err := exec.Command("ip", "netns", "pids", name).Output()
		if err != nil {
			return
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			var pid int
			if _, err := fmt.Sscan(p, &pid); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func deleteNetns(name string) error {
	var err error
	for range 10 {
		if err = ip("netns", "del", name); err == nil || !NetnsExists(name) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A stale bind mount that lost its namespace can still be unlinked.
	p := filepath.Join(NetnsDir, name)
	_ = syscall.Unmount(p, syscall.MNT_DETACH)
	if rmErr := os.Remove(p); rmErr == nil || errors.Is(rmErr, os.ErrNotExist) {
		return nil
	}
	return err
}

// CheckPrereqs reports, in one error, what is missing to build a testbed:
// root and the ip and nsenter commands.
func CheckPrereqs() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces need it; run with sudo)")
	}
	for _, c := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", c, packageOf(c)))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("testbed: missing %s", strings.Join(missing, ", "))
	}
	return nil
}

func packageOf(cmd string) string {
	switch cmd {
	case "ip", "ss", "bridge":
		return "iproute2"
	case "nsenter", "unshare":
		return "util-linux"
	case "ping":
		return "iputils-ping"
	}
	return cmd
}

// RandomID returns 2*n random hex characters.
func RandomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// subnetOctet picks the third octet of the underlay subnet from the prefix,
// so two testbeds rarely share addresses (they could not collide anyway,
// being in different namespaces, but captures stay unambiguous).
func subnetOctet(prefix string) int {
	h := fnv.New32a()
	h.Write([]byte(prefix))
	return 100 + int(h.Sum32()%150)
}

// ip runs `ip args...` and returns an error including its stderr.
func ip(args ...string) error {
	_, err := run("ip", args...)
	return err
}

// ipIn runs `ip -n ns args...`.
func ipIn(ns string, args ...string) error {
	return ip(append([]string{"-n", ns}, args...)...)
}

func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Links returns the names of the network interfaces in the named netns.
func Links(netns string) ([]string, error) {
	out, err := run("ip", "-n", netns, "-j", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		IfName string `json:"ifname"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("testbed: parse ip -j link: %w", err)
	}
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.IfName)
	}
	return names, nil
}

// InNetns runs argv inside the network namespace at path (with nsenter, so
// the mount namespace is the caller's) and returns its combined output.
func InNetns(ctx context.Context, path string, argv ...string) (string, error) {
	args := append([]string{"--net=" + path, "--"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", path, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Running returns the hosts whose daemon is running.
func (tb *Testbed) Running() []*Host {
	var hs []*Host
	for _, h := range tb.Hosts {
		if h.Running() {
			hs = append(hs, h)
		}
	}
	return hs
}

// StartDaemons starts the daemon of every host not running yet, in order
// (so h1 is up before the others join it), each with extra appended to its
// arguments, then waits with WaitCluster until all of them see each other.
func (tb *Testbed) StartDaemons(extra ...string) error {
	for _, h := range tb.Hosts {
		if h.Running() {
			continue
		}
		if err := h.StartDaemon(extra...); err != nil {
			return err
		}
	}
	return tb.WaitCluster(tb.readyTimeout)
}

// WaitCluster waits until `vxmesh node ls` on every host with a running
// daemon shows every one of those hosts alive, polling until timeout. The
// error names what the last poll saw, with the log tails of the daemons.
func (tb *Testbed) WaitCluster(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		running := tb.Running()
		var err error
		for _, h := range running {
			if err = h.clusterSees(running); err != nil {
				break
			}
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, h := range running {
				fmt.Fprintf(&logs, "\n--- %s log:\n%s", h.Name, h.LogTail(10))
			}
			return fmt.Errorf("testbed: cluster not formed after %v: %w%s", timeout, err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
