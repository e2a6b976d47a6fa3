package main

// The published-port section (-only publish, and part of the default
// run): a client outside the overlay reaches one backend container's HTTP
// server and iperf3 through three front doors, measured in one run:
//
//   - vxmesh: `vxmesh run -p 80:80 -p 5201:5201` on the host: the daemon's
//     host socket, the daemon dialling the backend with the client's own
//     address from inside the container's namespace (the fast path; with
//     --publish-fast-path=false, from the network's gateway netstack).
//   - haproxy: HAProxy (mode tcp) in a namespace with an uplink on the
//     underlay and an eth0 on the same overlay network (a container), as
//     HAProxy on a host forwards to a Docker container's bridge address.
//   - haproxy-remote: the same HAProxy in such a namespace on the second
//     host (h2, no backend there), forwarding over the overlay (h2's
//     tunnel to h1) to the same backend: the anchor of mesh-remote, as a
//     Docker host's HAProxy reaching a container on another node.
//   - nft-dnat: the kernel's nftables DNAT to the backend's address in
//     another such namespace, forwarding between uplink and eth0 (with
//     masquerade on eth0: the backend's default route is the vxmesh
//     gateway, so replies must be steered back to the router).
//   - mesh-local, mesh-remote: the routing mesh, the same container as the
//     backend of service mesh published with `service create --publish
//     published=P,target=T,mode=ingress,client-ip=preserve`, reached on
//     the backend's own host and on a second host without a backend
//     (ingress host -> VXLAN tunnel -> backend host, the replies steered
//     back to the ingress host).
//
// Two testbed hosts (h1 holds every container, h2 none), network pub at
// -mtu; the client is an underlay namespace ("out"). Per row: iperf3 TCP client -> container
// (the direction the gateway's stack sends to the container) and
// container -> client (-R), new connections per second (wrk
// Connection: close, with the CPU time per connection of HAProxy and of
// both daemons, summed and split h1 / h2) and keep-alive requests per
// second. New connections per second is compared with HAProxy on the
// host the client enters: run -p and mesh-local with haproxy (h1),
// mesh-remote with haproxy-remote (h2), the other ratios are context. Rows are
// PublishRow values measured by measurePublished, which takes any
// published address, so a routing-mesh row is one more row. Each goal
// comparison is then measured again in -publish-rounds interleaved
// rounds (publishrounds.go), whose median ratio is the one judged.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// publishTopology is -only's name of the published-port section.
const publishTopology = "publish"

// Row names of the published-port section.
const (
	rowPubVxmesh  = "vxmesh"
	rowPubHAProxy = "haproxy"
	// rowPubHAProxyRemote is HAProxy on h2 forwarding through the tunnel
	// to the backend on h1: mesh-remote's anchor.
	rowPubHAProxyRemote = "haproxy-remote"
	rowPubDNAT          = "nft-dnat"
	// rowPubMeshLocal and rowPubMeshRemote are the routing mesh's
	// published port on the backend's host and on the host without one.
	rowPubMeshLocal  = "mesh-local"
	rowPubMeshRemote = "mesh-remote"
)

// The routing mesh rows' service and its published ports (the backend's
// HTTP and iperf3 ports are its targets).
const (
	meshService   = "mesh"
	meshHTTPPort  = 8080
	meshIperfPort = 15201
)

// PublishRow is one front door to the backend: where the client connects
// and what it measured.
type PublishRow struct {
	Name, Desc string
	// Addr is the address the client connects to; HTTPPort and
	// IperfPort the ports of the backend's HTTP server and iperf3 there.
	Addr                string
	HTTPPort, IperfPort int
	// InBps is iperf3 client -> backend, OutBps backend -> client (-R).
	InBps, OutBps    float64
	InRetr, OutRetr  int64
	Close, KeepAlive WrkResult
	// DaemonCPU and ProxyCPU are the CPU time (user + system) per
	// request of the Connection: close run of the vxmesh daemons of both
	// hosts, summed (every row's frames to and from the container cross
	// h1's switch: the routers' rows too, their namespaces being
	// containers on the overlay; the TAP writes carry the receiving
	// kernel's TCP work; the remote rows' frames cross h2's switch and
	// the tunnel too) and of HAProxy; zero: not measured. DaemonCPUs is
	// DaemonCPU per daemon, in the order of daemonPIDs (h1, h2).
	DaemonCPU, ProxyCPU time.Duration
	DaemonCPUs          []time.Duration
	Err                 error

	client     string // netns path of the outside client this row measures from
	daemonPIDs []int
	proxyPIDs  []int
}

// publishBed is the section's testbed.
type publishBed struct {
	tb      *testbed.Testbed
	host    *testbed.Host
	ingress *testbed.Host // the second host, without a backend
	client  string        // the outside client's netns path (routers' rows)
	backend string        // the backend container's overlay address
	mtu     int
	ps      procs
	closeFn func()
}

// runPublish builds the bed, measures every row and prints them.
func runPublish(ctx context.Context, cfg config, prefix string, out, log io.Writer) error {
	fmt.Fprintln(log, "publish: building host, backend, routers and outside client")
	loadBefore := loadAvg()
	bed, rows, err := newPublishBed(ctx, cfg, prefix)
	if err != nil {
		return err
	}
	defer bed.close()
	for i := range rows {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(log, "publish: measuring %s (%s)\n", rows[i].Name, rows[i].Addr)
		rows[i].Err = measurePublished(ctx, cfg, rows[i].client, &rows[i], log)
	}
	var rounds []PubRounds
	if cfg.publishRounds > 0 && ctx.Err() == nil {
		rounds = measureRounds(ctx, cfg, rows, log)
	}
	printPublish(out, cfg, publishReport{mtu: bed.mtu, rows: rows, rounds: rounds, loadBefore: loadBefore, loadAfter: loadAvg()})
	var errs []string
	for _, r := range rows {
		if r.Err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", r.Name, r.Err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return ctx.Err()
}

// newPublishBed makes the hosts, the backend b1 (published), the router
// containers hap and dnat on h1 and hap2 on h2 with their uplinks, the
// servers, the two HAProxies and the DNAT rules, and returns the rows to
// measure.
func newPublishBed(ctx context.Context, cfg config, prefix string) (bed *publishBed, rows []PublishRow, err error) {
	bin, cleanupBin, err := vxmeshBinary(cfg.binary)
	if err != nil {
		return nil, nil, err
	}
	tb, err := testbed.New(testbed.Options{Hosts: 2, Binary: bin, Prefix: prefix + "-"})
	if err != nil {
		cleanupBin()
		return nil, nil, err
	}
	bed = &publishBed{tb: tb, host: tb.Hosts[0], ingress: tb.Hosts[1]}
	stopServers := func() {}
	closeBed := func() {
		bed.ps.stop()
		stopServers()
		_ = tb.Close()
		cleanupBin()
	}
	defer func() {
		if err != nil {
			closeBed()
		}
	}()
	h := bed.host
	if err = tb.StartDaemons(); err != nil {
		return nil, nil, err
	}
	peer, err := tb.AddUnderlayPeer("out")
	if err != nil {
		return nil, nil, err
	}
	bed.client = peer.NetnsPath
	if err = bed.createOverlay(ctx, cfg); err != nil {
		return nil, nil, err
	}
	backend := lbServer{name: "b1", netns: h.ContainerNetnsPath("b1"), ip: bed.backend}
	stop, err := lbServers(ctx, tb.Dir, []lbServer{backend})
	if err != nil {
		return nil, nil, err
	}
	stopServers = stop
	addrs, err := bed.startRouters(ctx, peer.Addr, backend)
	if err != nil {
		return nil, nil, err
	}
	bed.closeFn = closeBed
	rows = publishRows(addrs, []int{h.DaemonPID(), bed.ingress.DaemonPID()}, bed.client)
	if err = ownClients(tb, rows); err != nil {
		return nil, nil, err
	}
	return bed, rows, nil
}

// createOverlay makes the network, the meshed service, the backend b1
// (publishing its ports) and the router containers hap and dnat on the
// first host, and records the network's MTU and the backend's address.
func (bed *publishBed) createOverlay(ctx context.Context, cfg config) error {
	for _, args := range [][]string{
		{"network", "create", "pub", "--subnet", "10.87.0.0/24", "--mtu", fmt.Sprint(cfg.mtu)},
		{"service", "create", meshService, "--network", "pub", "--port", fmt.Sprint(httpPort), "--port", fmt.Sprint(iperfPort),
			"--publish", fmt.Sprintf("published=%d,target=%d,mode=ingress,client-ip=preserve", meshHTTPPort, httpPort),
			"--publish", fmt.Sprintf("published=%d,target=%d,mode=ingress,client-ip=preserve", meshIperfPort, iperfPort)},
		{"run", "-d", "--network", "pub", "--name", "b1", "--service", meshService, "-p", fmt.Sprintf("%d:%d", httpPort, httpPort), "-p", fmt.Sprintf("%d:%d", iperfPort, iperfPort), "--", "sleep", "infinity"},
		{"run", "-d", "--network", "pub", "--name", "hap", "--", "sleep", "infinity"},
		{"run", "-d", "--network", "pub", "--name", "dnat", "--", "sleep", "infinity"},
	} {
		if _, err := bed.host.CLIContext(ctx, args...); err != nil {
			return err
		}
	}
	var n api.Network
	if err := bed.host.CLIJSON(&n, "network", "inspect", "pub"); err != nil {
		return err
	}
	bed.mtu = n.MTU
	ips, err := endpointIPs(bed.host)
	if err != nil {
		return err
	}
	bed.backend = ips["b1"]
	return nil
}

// startRouters gives the routers their addresses on the outside
// network (peerAddr's /24), starts HAProxy and the DNAT router there and
// the remote HAProxy, once every host publishes the meshed service; it
// returns the addresses of the rows.
func (bed *publishBed) startRouters(ctx context.Context, peerAddr string, backend lbServer) (publishAddrs, error) {
	h := bed.host
	net24 := peerAddr[:strings.LastIndexByte(peerAddr, '.')]
	addrs := publishAddrs{h1: h.Addr, h2: bed.ingress.Addr, hap: net24 + ".240", dnat: net24 + ".241", hap2: net24 + ".242"}
	if err := bed.uplink(ctx, h, "hap", addrs.hap); err != nil {
		return publishAddrs{}, err
	}
	if err := bed.uplink(ctx, h, "dnat", addrs.dnat); err != nil {
		return publishAddrs{}, err
	}
	if err := startHAProxy(ctx, &bed.ps, bed.tb.Dir, h.ContainerNetnsPath("hap"), []lbServer{backend}); err != nil {
		return publishAddrs{}, fmt.Errorf("%w: %s", err, logTail(filepath.Join(bed.tb.Dir, "haproxy.log")))
	}
	addrs.hapPID = bed.ps.cmds[len(bed.ps.cmds)-1].Process.Pid // nsenter execs haproxy
	if err := bed.dnat(ctx, bed.backend); err != nil {
		return publishAddrs{}, err
	}
	for _, hh := range bed.tb.Hosts {
		if err := waitMeshPublished(ctx, hh, meshService, 30*time.Second); err != nil {
			return publishAddrs{}, err
		}
	}
	var err error
	if addrs.hap2PID, err = bed.remoteHAProxy(ctx, addrs.hap2, backend); err != nil {
		return publishAddrs{}, err
	}
	return addrs, nil
}

// publishAddrs are the addresses the client connects to: h1 and h2 (run
// -p, the routing mesh), the routers hap and dnat on h1 and hap2 on h2,
// and the two HAProxies' process ids.
type publishAddrs struct {
	h1, h2, hap, dnat, hap2 string
	hapPID, hap2PID         int
}

// publishRows are the section's rows: every row measures the CPU time of
// both daemons (h1's, h2's), HAProxy's rows that of their HAProxy; all
// connect from client (ownClients gives the rows that keep the client's
// address their own).
func publishRows(a publishAddrs, daemons []int, client string) []PublishRow {
	rows := []PublishRow{
		{Name: rowPubVxmesh, Desc: "run -p: host socket -> container's netns, lo (fast path; client's address kept)", Addr: a.h1},
		{Name: rowPubHAProxy, Desc: "HAProxy (mode tcp) in a router namespace on h1 -> container", Addr: a.hap, proxyPIDs: []int{a.hapPID}},
		{Name: rowPubDNAT, Desc: "nftables DNAT (+ masquerade) in a router namespace on h1 -> container", Addr: a.dnat},
		{Name: rowPubHAProxyRemote, Desc: "HAProxy (mode tcp) in a router namespace on h2 -> tunnel -> container on h1", Addr: a.hap2, proxyPIDs: []int{a.hap2PID}},
	}
	for i := range rows {
		rows[i].HTTPPort, rows[i].IperfPort = httpPort, iperfPort
	}
	rows = append(rows,
		PublishRow{Name: rowPubMeshLocal, Desc: "routing mesh on the backend's host: host socket -> gateway netstack -> container (client's address kept)",
			Addr: a.h1, HTTPPort: meshHTTPPort, IperfPort: meshIperfPort},
		PublishRow{Name: rowPubMeshRemote, Desc: "routing mesh on a host without a backend: ingress -> tunnel -> backend's host -> container, replies steered back",
			Addr: a.h2, HTTPPort: meshHTTPPort, IperfPort: meshIperfPort})
	for i := range rows {
		rows[i].client, rows[i].daemonPIDs = client, daemons
	}
	return rows
}

// remoteHAProxy makes the router container hap2 on the second host, with
// an uplink at addr, and runs HAProxy there forwarding to backend (on h1,
// through the tunnel); it returns HAProxy's process id.
func (bed *publishBed) remoteHAProxy(ctx context.Context, addr string, backend lbServer) (int, error) {
	h2 := bed.ingress
	if _, err := h2.CLIContext(ctx, "run", "-d", "--network", "pub", "--name", "hap2", "--", "sleep", "infinity"); err != nil {
		return 0, err
	}
	if err := bed.uplink(ctx, h2, "hap2", addr); err != nil {
		return 0, err
	}
	dir := filepath.Join(bed.tb.Dir, "hap2")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	if err := startHAProxy(ctx, &bed.ps, dir, h2.ContainerNetnsPath("hap2"), []lbServer{backend}); err != nil {
		return 0, fmt.Errorf("%w: %s", err, logTail(filepath.Join(dir, "haproxy.log")))
	}
	return bed.ps.cmds[len(bed.ps.cmds)-1].Process.Pid, nil // nsenter execs haproxy
}

// ownClients gives each row that keeps the client's address (run -p and
// the mesh rows) an outside client namespace of its own. They all reach
// the same backend port, so with one client a port wrk reused from an
// earlier row within the backend's TIME-WAIT (60 s) could meet a SYN whose
// timestamp the backend takes for older (PAWS) and drops: that row would
// measure SYN retransmissions. Every gateway derives its timestamps from
// the cluster key on wall-clock time (gateway/tcpsync.go), but the offset
// hashes the addresses dialled: run -p dials the container, the mesh the
// VIP.
// The routers' rows connect from their own addresses and keep bed.client.
func ownClients(tb *testbed.Testbed, rows []PublishRow) error {
	for i := range rows {
		if rows[i].Name != rowPubVxmesh && rows[i].Name != rowPubMeshLocal && rows[i].Name != rowPubMeshRemote {
			continue
		}
		peer, err := tb.AddUnderlayPeer("out-" + rows[i].Name)
		if err != nil {
			return err
		}
		rows[i].client = peer.NetnsPath
	}
	return nil
}

// waitMeshPublished polls h's `service inspect` of service until h sees
// a backend and reports every published port of the service up on h.
func waitMeshPublished(ctx context.Context, h *testbed.Host, service string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var s api.Service
		err := h.CLIJSON(&s, "service", "inspect", service)
		if err == nil {
			err = meshPublishedOn(s, h.Name)
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("service %s on %s after %v: %w", service, h.Name, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// meshPublishedOn says why s, as some host inspects it, is not yet
// published on node: no backend known, or a port not up there.
func meshPublishedOn(s api.Service, node string) error {
	if len(s.Backends) == 0 {
		return fmt.Errorf("no backend known")
	}
	if len(s.Published) == 0 {
		return fmt.Errorf("no published port")
	}
	for _, p := range s.Published {
		state := "not reported"
		for _, ps := range s.PublishState {
			if ps.Node == node && ps.Published == p {
				state = ps.State
			}
		}
		if state != "up" {
			return fmt.Errorf("%s is %s", p, state)
		}
	}
	return nil
}

// endpointIPs returns the containers' addresses from `endpoint ls`.
func endpointIPs(h *testbed.Host) (map[string]string, error) {
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
	if ips["b1"] == "" {
		return nil, fmt.Errorf("endpoint ls shows no b1: %+v", eps)
	}
	return ips, nil
}

// uplink gives container ctr of host h a second interface, uplink, on the
// underlay bridge with address addr/24: a router between the underlay and
// the overlay.
func (bed *publishBed) uplink(ctx context.Context, h *testbed.Host, ctr, addr string) error {
	port := "up-" + ctr
	ns := h.ContainerNetns(ctr)
	for _, args := range [][]string{
		{"-n", bed.tb.Underlay, "link", "add", port, "mtu", "1500", "type", "veth", "peer", "name", "uplink", "netns", ns},
		{"-n", bed.tb.Underlay, "link", "set", port, "master", "br0", "up"},
		{"-n", ns, "addr", "add", addr + "/24", "dev", "uplink"},
		{"-n", ns, "link", "set", "uplink", "up"},
	} {
		if o, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("uplink of %s: ip %s: %v: %s", ctr, strings.Join(args, " "), err, o)
		}
	}
	return nil
}

// dnat makes container dnat a kernel router that DNATs the HTTP and
// iperf3 ports arriving on its uplink to backend.
func (bed *publishBed) dnat(ctx context.Context, backend string) error {
	rules := fmt.Sprintf(`table ip vxpub {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "uplink" tcp dport { %[1]d, %[2]d } dnat to %[3]s
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
	}
}
`, httpPort, iperfPort, backend)
	path := filepath.Join(bed.tb.Dir, "publish-dnat.nft")
	if err := os.WriteFile(path, []byte(rules), 0o644); err != nil {
		return err
	}
	nft, err := lookTool("nft")
	if err != nil {
		return err
	}
	ns := bed.host.ContainerNetnsPath("dnat")
	if _, err := testbed.InNetns(ctx, ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	_, err = testbed.InNetns(ctx, ns, nft, "-f", path)
	return err
}

// close removes the bed.
func (bed *publishBed) close() {
	if bed.closeFn != nil {
		bed.closeFn()
	}
}

// measurePublished measures row r from the client namespace: it waits
// until r's HTTP answers, then runs iperf3 both ways and wrk with and
// without keep-alive, each for -duration.
func measurePublished(ctx context.Context, cfg config, client string, r *PublishRow, log io.Writer) error {
	http := fmt.Sprintf("%s:%d", r.Addr, r.HTTPPort)
	if err := waitHTTP(ctx, client, http, 15*time.Second); err != nil {
		return err
	}
	secs := fmt.Sprint(max(1, int(cfg.duration.Seconds())))
	for _, reverse := range []bool{false, true} {
		args := []string{"iperf3", "-c", r.Addr, "-p", fmt.Sprint(r.IperfPort), "-t", secs, "-J"}
		if reverse {
			args = append(args, "-R")
		}
		fmt.Fprintf(log, "  %s: %s\n", r.Name, strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + client, "--"}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		o, cerr := cmd.Output()
		ir, err := testbed.ParseIperf3JSON(o)
		if err != nil {
			return fmt.Errorf("iperf3: %v (%v)", err, cerr)
		}
		if reverse {
			r.OutBps, r.OutRetr = ir.ReceivedBitsPerSecond, ir.Retransmits
		} else {
			r.InBps, r.InRetr = ir.ReceivedBitsPerSecond, ir.Retransmits
		}
	}
	for _, keepAlive := range []bool{false, true} {
		fmt.Fprintf(log, "  %s: wrk %s\n", r.Name, strings.Join(pubWrkArgs(cfg, http, secs, keepAlive), " "))
		wr, cpu, err := wrkCPU(ctx, cfg, r, secs, keepAlive)
		if err != nil {
			return err
		}
		if keepAlive {
			r.KeepAlive = wr
		} else {
			r.Close = wr
			r.DaemonCPUs, r.DaemonCPU, r.ProxyCPU = cpu.daemons, cpu.daemon, cpu.proxy
		}
	}
	return nil
}

// pubWrkArgs are wrk's arguments for a run of secs seconds against http
// (host:port), with or without keep-alive.
func pubWrkArgs(cfg config, http, secs string, keepAlive bool) []string {
	args := []string{"-t", fmt.Sprint(cfg.lb.threads), "-c", fmt.Sprint(cfg.lb.conns), "-d", secs + "s", "--latency"}
	if !keepAlive {
		args = append(args, "-H", "Connection: close")
	}
	return append(args, "http://"+http+"/")
}

// connCPU is the CPU time per request of a wrk run: each daemon's (in
// the order of PublishRow.daemonPIDs), their sum, and the proxy's; a
// part not measured is nil or zero.
type connCPU struct {
	daemons       []time.Duration
	daemon, proxy time.Duration
}

// wrkCPU runs wrk from r's client against r's HTTP port for secs
// seconds and returns its result with the CPU time per request of r's
// daemons and proxy over the run.
func wrkCPU(ctx context.Context, cfg config, r *PublishRow, secs string, keepAlive bool) (WrkResult, connCPU, error) {
	http := fmt.Sprintf("%s:%d", r.Addr, r.HTTPPort)
	d0, derr0 := cpuTimes(r.daemonPIDs)
	p0, perr0 := cpuTime(r.proxyPIDs)
	wr, err := runWrk(ctx, r.client, pubWrkArgs(cfg, http, secs, keepAlive))
	if err != nil {
		return wr, connCPU{}, err
	}
	d1, derr1 := cpuTimes(r.daemonPIDs)
	p1, perr1 := cpuTime(r.proxyPIDs)
	var c connCPU
	if n := time.Duration(wr.Requests); n > 0 {
		if derr0 == nil && derr1 == nil {
			c.daemons = make([]time.Duration, len(d0))
			for i := range d0 {
				c.daemons[i] = (d1[i] - d0[i]) / n
				c.daemon += c.daemons[i]
			}
		}
		if perr0 == nil && perr1 == nil {
			c.proxy = (p1 - p0) / n
		}
	}
	return wr, c, nil
}

// printPublish prints the rows, their ratios to the vxmesh rows and the
// interleaved rounds (if any): a goal ratio measured in rounds is judged
// there, its single-run ratio above is context.
func printPublish(out io.Writer, cfg config, rep publishReport) {
	fmt.Fprintf(out, "\npublished port, 2 hosts: outside client -> one container on h1 (MTU %d); iperf3 TCP %s each way; wrk -t%d -c%d %s, GET / -> %d bytes\n\n",
		rep.mtu, cfg.duration, cfg.lb.threads, cfg.lb.conns, cfg.duration, len(httpBody))
	by := printPublishRows(out, rep.rows)
	fmt.Fprintln(out)
	printPublishRatios(out, by, rep.rounds)
	printRounds(out, cfg, rep.rounds)
	printLoad(out, rep.loadBefore, rep.loadAfter)
}

// publishReport is what the published-port section prints: the rows, the
// interleaved rounds, the MTU and the machine's load before and after.
type publishReport struct {
	mtu                   int
	rows                  []PublishRow
	rounds                []PubRounds
	loadBefore, loadAfter string
}

// printPublishRows prints the table of rows and returns the rows that
// did not fail, by name.
func printPublishRows(out io.Writer, rows []PublishRow) map[string]PublishRow {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "row\tpath\tGbit/s in\tretrans\tGbit/s out\tretrans\tconn/s (close)\tp99\tCPU/conn daemons h1+h2\th1 / h2\tHAProxy\treq/s (keep-alive)\tp99\twrk errors\t")
	by := map[string]PublishRow{}
	for _, r := range rows {
		if r.Err != nil {
			fmt.Fprintf(tw, "%s\t%s\tfailed: %v\t\t\t\t\t\t\t\t\t\t\t\t\n", r.Name, r.Desc, r.Err)
			continue
		}
		by[r.Name] = r
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%d\t%.2f\t%d\t%.0f\t%s\t%s\t%s\t%s\t%.0f\t%s\t%d\t\n", r.Name, r.Desc, r.InBps/1e9, r.InRetr, r.OutBps/1e9, r.OutRetr,
			r.Close.RequestsPerSec, fmtMs(r.Close.P99), fmtCPU(r.DaemonCPU), fmtCPUSplit(r.DaemonCPUs), fmtCPU(r.ProxyCPU), r.KeepAlive.RequestsPerSec, fmtMs(r.KeepAlive.P99), r.Close.Errors()+r.KeepAlive.Errors())
	}
	tw.Flush()
	return by
}

// printPublishRatios prints the ratios of the rows by name against their
// goals; one the interleaved rounds measure points to them.
func printPublishRatios(out io.Writer, by map[string]PublishRow, rounds []PubRounds) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ratio\tvalue\tgoal\t")
	inRounds := map[string]bool{}
	for _, p := range rounds {
		if p.Err == nil && len(p.Ratios()) > 0 {
			inRounds[fmt.Sprintf("new conn/s %s / %s", p.A, p.B)] = true
		}
	}
	for _, q := range publishRatios(by) {
		if inRounds[q.name] {
			q.goal = "(one run each: see the interleaved rounds)"
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%s\t\n", q.name, q.value, q.goal)
	}
	tw.Flush()
}

// publishRatios compares each front door of vxmesh (run -p and the
// routing mesh on the backend's host and on a host without one) with
// HAProxy and nftables DNAT: new connections per second above those of
// HAProxy on the host the client enters is the goal (h1's HAProxy
// for run -p and mesh-local, h2's, haproxy-remote, for mesh-remote), the
// rest context (mesh-remote is compared with h1's HAProxy and DNAT too).
// A failed row has no ratios.
func publishRatios(by map[string]PublishRow) []egressRatio {
	type metric struct {
		name string
		f    func(PublishRow) float64
	}
	conns := metric{"new conn/s", func(r PublishRow) float64 { return r.Close.RequestsPerSec }}
	in := metric{"throughput in", func(r PublishRow) float64 { return r.InBps }}
	outm := metric{"throughput out", func(r PublishRow) float64 { return r.OutBps }}
	ka := metric{"keep-alive req/s", func(r PublishRow) float64 { return r.KeepAlive.RequestsPerSec }}
	var res []egressRatio
	for _, row := range []string{rowPubVxmesh, rowPubMeshLocal, rowPubMeshRemote} {
		a, aok := by[row]
		if !aok {
			continue
		}
		// anchor is the HAProxy of the host the client enters (the
		// goal), others the routers compared for context.
		anchor, others := publishAnchor(row), []string{rowPubDNAT}
		if row == rowPubMeshRemote {
			others = []string{rowPubHAProxy, rowPubDNAT}
		}
		for _, m := range []metric{conns, in, outm, ka} {
			for i, bname := range append([]string{anchor}, others...) {
				b, bok := by[bname]
				if !bok || m.f(b) <= 0 {
					continue
				}
				q := egressRatio{name: fmt.Sprintf("%s %s / %s", m.name, row, bname), value: m.f(a) / m.f(b), goal: "(context)"}
				if i == 0 && m.name == conns.name {
					q.goal = "> 1: " + metOrNot(q.value > 1)
				}
				res = append(res, q)
			}
		}
	}
	return res
}

// fmtCPUSplit formats the CPU time per connection of each daemon, in ms,
// "-" if not measured.
func fmtCPUSplit(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.3f", float64(d)/1e6)
	}
	return strings.Join(parts, " / ")
}

// fmtCPU formats a CPU time per connection, "-" if not measured.
func fmtCPU(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f ms", float64(d)/1e6)
}

// cpuTime returns the CPU time (user + system, every thread) the
// processes pids have used, from /proc/PID/stat (clock ticks of 10 ms).
func cpuTime(pids []int) (time.Duration, error) {
	ts, err := cpuTimes(pids)
	var sum time.Duration
	for _, t := range ts {
		sum += t
	}
	return sum, err
}

// cpuTimes returns the CPU time of each of the processes pids, as
// cpuTime.
func cpuTimes(pids []int) ([]time.Duration, error) {
	if len(pids) == 0 {
		return nil, errors.New("no process")
	}
	ts := make([]time.Duration, len(pids))
	for i, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return nil, err
		}
		t, err := parseStatCPU(string(b))
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ts[i] = t
	}
	return ts, nil
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times (100 on
// every Linux architecture that matters here).
const clockTick = 10 * time.Millisecond

// parseStatCPU returns utime + stime of a /proc/PID/stat line.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields", len(f)+2)
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	k, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil || u > 1<<40 || k > 1<<40 {
		return 0, fmt.Errorf("bad utime %q or stime %q", f[11], f[12])
	}
	return time.Duration(u+k) * clockTick, nil
}
