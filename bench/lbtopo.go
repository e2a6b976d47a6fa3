package main

// The load-balancer benchmark's two topologies: vxmesh (rows direct, vip,
// haproxy) and the kernel's (rows kernel-direct, kernel-dnat).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

const lbSubnet = "10.88.3.0/24"

// lbServiceArgs are the `vxmesh service create` calls of the vip row:
// web balances HTTP round robin, perf sends iperf3's control and data
// connections of one client to one backend (client-IP affinity).
var lbServiceArgs = [][]string{
	{"service", "create", "web", "--network", "lbb", "--port", fmt.Sprintf("%d/tcp", httpPort)},
	{"service", "create", "perf", "--network", "lbb", "--port", fmt.Sprintf("%d/tcp", iperfPort), "--affinity", "client-ip"},
}

// errNoServiceCmd is the vip row's skip reason.
var errNoServiceCmd = errors.New("this vxmesh binary has no `service` command (services not built yet)")

// lbServices creates the vip row's services, or returns errNoServiceCmd
// if the CLI does not know `service`.
func lbServices(ctx context.Context, h *testbed.Host) error {
	if _, err := h.CLIContext(ctx, "service", "ls"); err != nil {
		var ce *testbed.CLIError
		if errors.As(err, &ce) && strings.Contains(ce.Stderr, `unknown command "service"`) {
			return errNoServiceCmd
		}
		return err
	}
	for _, a := range lbServiceArgs {
		if _, err := h.CLIContext(ctx, a...); err != nil {
			return err
		}
	}
	return nil
}

// serviceVIP returns the VIP of service name in subnet, read from
// `vxmesh service inspect --format json NAME`. The CLI's JSON shape was
// not settled when this was written, so it takes the first address in
// subnet found under a key containing "vip" or "virtual" (any case), at
// any depth.
func serviceVIP(h *testbed.Host, name string, subnet netip.Prefix) (string, error) {
	var doc any
	if err := h.CLIJSON(&doc, "service", "inspect", name); err != nil {
		return "", err
	}
	if ip, ok := findVIP(doc, false, subnet); ok {
		return ip.String(), nil
	}
	b, _ := json.Marshal(doc)
	return "", fmt.Errorf("service inspect %s shows no VIP in %s: %s", name, subnet, tail(string(b), 300))
}

// findVIP walks a decoded JSON document for an address (or prefix) in
// subnet held under a "vip" key (underVIP: the parent key was one).
func findVIP(v any, underVIP bool, subnet netip.Prefix) (netip.Addr, bool) {
	switch v := v.(type) {
	case string:
		if !underVIP {
			return netip.Addr{}, false
		}
		if p, err := netip.ParsePrefix(v); err == nil && subnet.Contains(p.Addr()) {
			return p.Addr(), true
		}
		if a, err := netip.ParseAddr(v); err == nil && subnet.Contains(a) {
			return a, true
		}
	case []any:
		for _, e := range v {
			if a, ok := findVIP(e, underVIP, subnet); ok {
				return a, true
			}
		}
	case map[string]any:
		for k, e := range v {
			if a, ok := findVIP(e, underVIP || isVIPKey(k), subnet); ok {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

func isVIPKey(k string) bool {
	k = strings.ToLower(k)
	return strings.Contains(k, "vip") || strings.Contains(k, "virtual")
}

// lbVxmeshRows are the rows of the vxmesh topology, unmeasured.
func lbVxmeshRows() []LBRow {
	return []LBRow{
		{Name: rowDirect, Desc: "vxmesh: client -> backend b1"},
		{Name: rowVIP, Desc: "vxmesh service VIP -> 4 backends (rr)"},
		{Name: rowHAProxy, Desc: "vxmesh: client -> HAProxy container (mode tcp, rr) -> 4 backends"},
	}
}

// lbVxmesh builds the vxmesh topology and measures its rows; a setup
// failure fails every row not skipped.
func lbVxmesh(ctx context.Context, cfg config, prefix string, log io.Writer) []LBRow {
	rows := lbVxmeshRows()
	fmt.Fprintln(log, "lb vxmesh: building testbed host and daemon")
	bin, cleanupBin, err := vxmeshBinary(cfg.binary)
	if err != nil {
		return failRows(rows, err)
	}
	defer cleanupBin()
	tb, err := testbed.New(testbed.Options{Hosts: 1, Binary: bin, Prefix: prefix + "-"})
	if err != nil {
		return failRows(rows, err)
	}
	defer func() {
		if err := tb.Close(); err != nil {
			fmt.Fprintln(log, "lb vxmesh: cleanup:", err)
		}
	}()
	h := tb.Hosts[0]
	if err := h.StartDaemon("--log-level", "warn"); err != nil {
		return failRows(rows, err)
	}
	if _, err := h.CLIContext(ctx, "network", "create", "lbb", "--subnet", lbSubnet, "--mtu", fmt.Sprint(cfg.mtu)); err != nil {
		return failRows(rows, err)
	}
	svcErr := lbServices(ctx, h)
	switch {
	case errors.Is(svcErr, errNoServiceCmd):
		rows[1].Skipped = svcErr.Error()
	case svcErr != nil:
		rows[1].Error = withDaemonLog(h, svcErr).Error()
	}
	ips, err := lbContainers(ctx, h, svcErr == nil)
	if err != nil {
		return failRows(rows, withDaemonLog(h, err))
	}
	var backends []lbServer
	for i := 1; i <= lbBackends; i++ {
		n := fmt.Sprintf("b%d", i)
		backends = append(backends, lbServer{name: n, netns: h.ContainerNetnsPath(n), ip: ips[n]})
	}
	stopServers, err := lbServers(ctx, tb.Dir, backends)
	if err != nil {
		return failRows(rows, err)
	}
	defer stopServers()
	var ps procs
	defer ps.stop()
	hapLog := filepath.Join(tb.Dir, "haproxy.log")
	rows[0].Target, rows[2].Target = backends[0].ip, ips["hap"]
	if err := startHAProxy(ctx, &ps, tb.Dir, h.ContainerNetnsPath("hap"), backends); err != nil {
		rows[2].Error = fmt.Sprintf("%v: %s", err, logTail(hapLog))
	}
	if svcErr == nil {
		setVIPTargets(h, &rows[1])
	}
	client := h.ContainerNetnsPath("cli")
	for i := range rows {
		r := &rows[i]
		if !r.ok() || ctx.Err() != nil {
			continue
		}
		fmt.Fprintf(log, "lb vxmesh: measuring %s (%s)\n", r.Name, r.Target)
		if err := measureLB(ctx, cfg, client, r, log); err != nil {
			err = withDaemonLog(h, err)
			if r.Name == rowHAProxy {
				err = fmt.Errorf("%w\nhaproxy log: %s", err, logTail(hapLog))
			}
			r.Error = err.Error()
		}
	}
	return rows
}

// failRows marks every row not yet failed or skipped as failed with err,
// and returns rows.
func failRows(rows []LBRow, err error) []LBRow {
	for i := range rows {
		if rows[i].ok() {
			rows[i].Error = err.Error()
		}
	}
	return rows
}

// setVIPTargets points the service row r at the VIPs of the web and perf
// services, or fails it.
func setVIPTargets(h *testbed.Host, r *LBRow) {
	var err error
	r.Target, err = serviceVIP(h, "web", netip.MustParsePrefix(lbSubnet))
	if err == nil {
		r.IperfTarget, err = serviceVIP(h, "perf", netip.MustParsePrefix(lbSubnet))
	}
	if err != nil {
		r.Error = withDaemonLog(h, err).Error()
	}
}

// withDaemonLog adds the end of h's daemon log to err.
func withDaemonLog(h *testbed.Host, err error) error {
	return fmt.Errorf("%w; daemon log:\n%s", err, h.LogTail(15))
}

// lbContainers makes the client, the backends (joining the services if
// withServices) and the HAProxy container, and returns their addresses.
func lbContainers(ctx context.Context, h *testbed.Host, withServices bool) (map[string]string, error) {
	names := []string{"cli", "hap"}
	for i := 1; i <= lbBackends; i++ {
		names = append(names, fmt.Sprintf("b%d", i))
	}
	for _, n := range names {
		args := []string{"run", "-d", "--network", "lbb", "--name", n}
		if withServices && strings.HasPrefix(n, "b") {
			args = append(args, "--service", "web", "--service", "perf")
		}
		if _, err := h.CLIContext(ctx, append(args, "--", "sleep", "infinity")...); err != nil {
			return nil, err
		}
	}
	var eps []struct {
		Name string `json:"name"`
		IP   string `json:"ip"`
	}
	if err := h.CLIJSON(&eps, "endpoint", "ls"); err != nil {
		return nil, err
	}
	ips := map[string]string{}
	for _, e := range eps {
		ips[e.Name] = strings.Split(e.IP, "/")[0]
	}
	for _, n := range names {
		if ips[n] == "" {
			return nil, fmt.Errorf("endpoint ls shows no %s: %+v", n, eps)
		}
	}
	return ips, nil
}

// haproxyConfig is HAProxy's configuration: TCP round robin on the HTTP
// port, by client address on iperf3's (its two connections must meet one
// server).
func haproxyConfig(backends []lbServer) string {
	var b strings.Builder
	b.WriteString("global\n\tmaxconn 4096\n\ndefaults\n\tmode tcp\n\ttimeout connect 5s\n\ttimeout client 1m\n\ttimeout server 1m\n")
	for _, fe := range []struct {
		name, balance string
		port          int
	}{{"web", "roundrobin", httpPort}, {"perf", "source", iperfPort}} {
		fmt.Fprintf(&b, "\nfrontend %s\n\tbind :%d\n\tdefault_backend %s\n\nbackend %s\n\tbalance %s\n", fe.name, fe.port, fe.name, fe.name, fe.balance)
		for _, s := range backends {
			fmt.Fprintf(&b, "\tserver %s %s:%d\n", s.name, s.ip, fe.port)
		}
	}
	return b.String()
}

// startHAProxy runs HAProxy in the foreground in netns and waits until it
// listens on both ports.
func startHAProxy(ctx context.Context, ps *procs, dir, netns string, backends []lbServer) error {
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(haproxyConfig(backends)), 0o644); err != nil {
		return err
	}
	bin, err := lookTool("haproxy")
	if err != nil {
		return err
	}
	if _, err := ps.start(netns, filepath.Join(dir, "haproxy.log"), bin, "-db", "-f", cfgPath); err != nil {
		return err
	}
	for _, port := range []int{httpPort, iperfPort} {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := testbed.WaitTCPListen(wctx, netns, port)
		cancel()
		if err != nil {
			return fmt.Errorf("haproxy: %w", err)
		}
	}
	return nil
}

// kernelLB is the kernel topology: a router namespace, a client and the
// backends.
type kernelLB struct {
	router, client string // netns paths
	backends       []lbServer
}

// nftRuleset DNATs the VIP like IPVS would: port 80 round robin, port
// 5201 by client address.
func nftRuleset(backends []lbServer) string {
	maps := func() string {
		var m []string
		for i, b := range backends {
			m = append(m, fmt.Sprintf("%d : %s", i, b.ip))
		}
		return strings.Join(m, ", ")
	}()
	return fmt.Sprintf(`table ip vxbench {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[1]s tcp dport %[2]d dnat to numgen inc mod %[4]d map { %[5]s }
		ip daddr %[1]s tcp dport %[3]d dnat to jhash ip saddr mod %[4]d map { %[5]s }
	}
}
`, kernelVIP, httpPort, iperfPort, len(backends), maps)
}

// buildKernelLB makes the namespaces, links, routes and nftables rules.
func buildKernelLB(ctx context.Context, prefix string, mtu int, dir string) (kernelLB, error) {
	k := kernelLB{router: filepath.Join(testbed.NetnsDir, prefix+"router"), client: filepath.Join(testbed.NetnsDir, prefix+"cli")}
	router, cli, m := prefix+"router", prefix+"cli", fmt.Sprint(mtu)
	cmds := [][]string{
		{"netns", "add", router},
		{"-n", router, "link", "set", "lo", "up"},
		{"-n", router, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"},
		{"-n", router, "link", "set", "br0", "mtu", m, "up"},
		{"-n", router, "addr", "add", "10.89.2.1/24", "dev", "br0"},
		{"netns", "add", cli},
		{"-n", cli, "link", "set", "lo", "up"},
		{"-n", router, "link", "add", "vcli", "mtu", m, "type", "veth", "peer", "name", "eth0", "netns", cli},
		{"-n", router, "addr", "add", "10.89.4.1/24", "dev", "vcli"},
		{"-n", router, "link", "set", "vcli", "up"},
		{"-n", cli, "link", "set", "eth0", "mtu", m, "up"},
		{"-n", cli, "addr", "add", "10.89.4.2/24", "dev", "eth0"},
		{"-n", cli, "route", "add", "default", "via", "10.89.4.1"},
	}
	for i := 1; i <= lbBackends; i++ {
		n := fmt.Sprintf("b%d", i)
		ns, ip := prefix+n, fmt.Sprintf("10.89.2.%d", i+1)
		k.backends = append(k.backends, lbServer{name: n, netns: filepath.Join(testbed.NetnsDir, ns), ip: ip})
		cmds = append(cmds,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", router, "link", "add", "v" + n, "mtu", m, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", router, "link", "set", "v" + n, "master", "br0", "up"},
			[]string{"-n", ns, "link", "set", "eth0", "mtu", m, "up"},
			[]string{"-n", ns, "addr", "add", ip + "/24", "dev", "eth0"},
			[]string{"-n", ns, "route", "add", "default", "via", "10.89.2.1"},
		)
	}
	for _, c := range cmds {
		if out, err := exec.CommandContext(ctx, "ip", c...).CombinedOutput(); err != nil {
			return k, fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	if _, err := testbed.InNetns(ctx, k.router, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return k, err
	}
	rules := filepath.Join(dir, "kernel-lb.nft")
	if err := os.WriteFile(rules, []byte(nftRuleset(k.backends)), 0o644); err != nil {
		return k, err
	}
	nft, err := lookTool("nft")
	if err != nil {
		return k, err
	}
	if _, err := testbed.InNetns(ctx, k.router, nft, "-f", rules); err != nil {
		return k, err
	}
	return k, nil
}

// lbKernel builds the kernel topology and measures its rows.
func lbKernel(ctx context.Context, cfg config, prefix string, log io.Writer) []LBRow {
	rows := []LBRow{
		{Name: rowKernelDirect, Desc: "kernel: client -> router -> bridge -> b1"},
		{Name: rowKernelDNAT, Desc: "kernel: nftables DNAT (numgen inc mod 4) on the router"},
	}
	fail := func(err error) []LBRow {
		for i := range rows {
			if rows[i].Error == "" {
				rows[i].Error = err.Error()
			}
		}
		return rows
	}
	fmt.Fprintln(log, "lb kernel: building router, bridge, client and backends")
	prefix += "-"
	defer func() {
		if err := testbed.Cleanup(prefix); err != nil {
			fmt.Fprintln(log, "lb kernel: cleanup:", err)
		}
	}()
	dir, err := os.MkdirTemp("", "vxbench-lb")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	k, err := buildKernelLB(ctx, prefix, cfg.mtu, dir)
	if err != nil {
		return fail(err)
	}
	stop, err := lbServers(ctx, dir, k.backends)
	if err != nil {
		return fail(err)
	}
	defer stop()
	rows[0].Target, rows[1].Target = k.backends[0].ip, kernelVIP
	for i := range rows {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(log, "lb kernel: measuring %s (%s)\n", rows[i].Name, rows[i].Target)
		if err := measureLB(ctx, cfg, k.client, &rows[i], log); err != nil {
			rows[i].Error = err.Error()
		}
	}
	return rows
}
