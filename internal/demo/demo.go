// Package demo implements `vxmesh demo`: it builds a three-host testbed
// (network namespaces on one underlay bridge, each running a vxmesh daemon,
// joined into one cluster), walks through the CLI flow a user would follow
// with one container per host, printing every command it runs (prefixed
// with the host it runs on) and its output, and removes everything it made,
// also when interrupted.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// iperfSeconds is the length of the demo's TCP transfer.
const iperfSeconds = 5

// demoHosts is the number of hosts; container ci runs on host hi.
const demoHosts = 3

// publishedPort is the demo service's port published by the routing mesh
// on every host, to its backends' iperf3 servers (5201).
const publishedPort = 8080

// CheckPrereqs reports what the demo needs and is missing: root and the
// ip, nsenter, ping, ss and iperf3 commands.
func CheckPrereqs() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the demo creates network namespaces; run it with sudo)")
	}
	pkgs := map[string]string{"ip": "iproute2", "ss": "iproute2", "nsenter": "util-linux", "ping": "iputils-ping", "iperf3": "iperf3"}
	for _, c := range []string{"ip", "ss", "nsenter", "ping", "iperf3"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", c, pkgs[c]))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("demo: missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// Run runs the demo with the vxmesh binary at binary, writing a narrated
// transcript to out. Cancelling ctx stops it; cleanup happens either way.
func Run(ctx context.Context, out io.Writer, binary string) error {
	return run(ctx, out, binary, "vxdemo"+testbed.RandomID(2)+"-")
}

// run is Run with the prefix of the demo's namespace names.
func run(ctx context.Context, out io.Writer, binary, prefix string) (err error) {
	if err := CheckPrereqs(); err != nil {
		return err
	}
	tb, err := testbed.New(testbed.Options{Hosts: demoHosts, Binary: binary, Prefix: prefix})
	if err != nil {
		return err
	}
	d := &demo{ctx: ctx, out: out, tb: tb}
	defer func() {
		fmt.Fprintf(out, "\n==> Cleaning up: removing the demo's containers, network, daemon and namespaces\n")
		d.cleanup()
		if cerr := tb.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("demo cleanup: %w", cerr))
		} else {
			fmt.Fprintln(out, "    done, nothing left behind")
		}
		if ctx.Err() != nil && err != nil {
			err = fmt.Errorf("demo interrupted: %w", err)
		}
	}()
	return d.steps()
}

type demo struct {
	ctx     context.Context
	out     io.Writer
	tb      *testbed.Testbed
	made    []made // containers to remove
	network string
	service string // to remove before the network
}

// made is a container the demo started, and the host it runs on.
type made struct {
	h    *testbed.Host
	name string
}

func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.out, "\n==> "+format+"\n", args...)
}

// cli prints and runs a vxmesh command on host h, echoing its output
// indented.
func (d *demo) cli(h *testbed.Host, args ...string) (string, error) {
	fmt.Fprintf(d.out, "%s$ vxmesh %s\n", h.Name, strings.Join(args, " "))
	out, err := h.CLIContext(d.ctx, args...)
	if s := strings.TrimRight(out, "\n"); s != "" {
		fmt.Fprintln(d.out, indent(s))
	}
	if err != nil {
		if d.ctx.Err() != nil {
			return out, d.ctx.Err()
		}
		return out, err
	}
	return out, nil
}

// steps runs the demo's steps in order, each printing what it runs and
// what that shows.
func (d *demo) steps() error {
	hosts := d.tb.Hosts
	if err := d.startDaemons(); err != nil {
		return err
	}
	if err := d.createNetwork(); err != nil {
		return err
	}
	ips, err := d.runContainers()
	if err != nil {
		return err
	}
	if err := d.pingAcross(ips); err != nil {
		return err
	}
	if err := d.resolveByName(); err != nil {
		return err
	}
	d.step("TCP throughput c1 (h1) -> c2 (h2) with iperf3 (%d s), across hosts", iperfSeconds)
	if err := d.iperf(hosts[0], hosts[1], ips["c2"]); err != nil {
		return err
	}
	if err := d.services(hosts); err != nil {
		return err
	}
	return d.showState()
}

// startDaemons is the first step: a daemon on each host, h2 and h3
// joining h1, and the cluster's nodes listed.
func (d *demo) startDaemons() error {
	hosts := d.tb.Hosts
	d.step("Starting a vxmesh daemon on each of %d hosts (network namespaces on one underlay bridge)", len(hosts))
	fmt.Fprintf(d.out, "    every daemon gets the same cluster key (made like `vxmesh keygen > %s`); h2 and h3 join h1\n", d.tb.KeyFile)
	for _, h := range hosts {
		// DaemonArgs starts with "nsenter --net=... -- BINARY".
		fmt.Fprintf(d.out, "%s$ vxmesh %s\n", h.Name, strings.Join(h.DaemonArgs()[4:], " "))
		if err := h.StartDaemon(); err != nil {
			return err
		}
	}
	if err := d.tb.WaitCluster(20 * time.Second); err != nil {
		return err
	}
	_, err := d.cli(hosts[0], "node", "ls")
	return err
}

// createNetwork creates the network demo on h1 and waits until every
// host has it.
func (d *demo) createNetwork() error {
	hosts := d.tb.Hosts
	d.step("Creating an overlay network on h1; it appears on every host")
	if _, err := d.cli(hosts[0], "network", "create", "demo", "--subnet", "10.42.0.0/24"); err != nil {
		return err
	}
	d.network = "demo"
	for _, h := range hosts[1:] {
		if err := waitFor(d.ctx, 10*time.Second, func() error {
			_, err := h.CLIContext(d.ctx, "network", "inspect", "demo")
			return err
		}); err != nil {
			return fmt.Errorf("demo: network demo did not reach %s: %w", h.Name, err)
		}
	}
	_, err := d.cli(hosts[len(hosts)-1], "network", "ls")
	return err
}

// runContainers starts container cN on host hN and returns their
// addresses by name.
func (d *demo) runContainers() (map[string]string, error) {
	hosts := d.tb.Hosts
	d.step("Starting one container per host (named network namespaces with eth0 on the network)")
	ips := map[string]string{}
	for i, h := range hosts {
		c := fmt.Sprintf("c%d", i+1)
		if _, err := d.cli(h, "run", "-d", "--network", "demo", "--name", c, "--", "sleep", "infinity"); err != nil {
			return nil, err
		}
		d.made = append(d.made, made{h, c})
		var eps []struct {
			Name string `json:"name"`
			IP   string `json:"ip"`
		}
		if err := h.CLIJSON(&eps, "endpoint", "ls"); err != nil {
			return nil, err
		}
		for _, e := range eps {
			if e.Name == c {
				ips[c] = strings.Split(e.IP, "/")[0]
			}
		}
		if ips[c] == "" {
			return nil, fmt.Errorf("demo: endpoint ls on %s does not show %s: %+v", h.Name, c, eps)
		}
	}
	if _, err := d.cli(hosts[0], "ps"); err != nil {
		return nil, err
	}
	if _, err := d.cli(hosts[0], "exec", "c1", "--", "ip", "-brief", "address", "show", "eth0"); err != nil {
		return nil, err
	}
	return ips, nil
}

// pingAcross pings c1 -> c2, c1 -> c3 and c3 -> c2 across hosts.
func (d *demo) pingAcross(ips map[string]string) error {
	hosts := d.tb.Hosts
	d.step("Ping across hosts: c1 (h1) -> c2 (%s, on h2) and c3 (%s, on h3), c3 -> c2, in VXLAN over the underlay", ips["c2"], ips["c3"])
	for _, p := range []struct {
		h        *testbed.Host
		from, to string
	}{{hosts[0], "c1", "c2"}, {hosts[0], "c1", "c3"}, {hosts[2], "c3", "c2"}} {
		// The first packets may wait for the remote endpoints to arrive.
		if err := waitFor(d.ctx, 10*time.Second, func() error {
			_, err := p.h.CLIContext(d.ctx, "exec", p.from, "--", "ping", "-c", "1", "-W", "1", ips[p.to])
			return err
		}); err != nil {
			return fmt.Errorf("demo: %s cannot reach %s: %w", p.from, p.to, err)
		}
		if _, err := d.cli(p.h, "exec", p.from, "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", ips[p.to]); err != nil {
			return err
		}
	}
	return nil
}

// resolveByName pings c1 from c3 by name, through the embedded DNS.
func (d *demo) resolveByName() error {
	h3 := d.tb.Hosts[2]
	d.step("Names resolve through the embedded DNS at 127.0.0.11 in every container: c3 (h3) pings c1 (h1) by name")
	if err := waitFor(d.ctx, 10*time.Second, func() error {
		_, err := h3.CLIContext(d.ctx, "exec", "c3", "--", "ping", "-c", "1", "-W", "1", "c1")
		return err
	}); err != nil {
		return fmt.Errorf("demo: c3 cannot reach c1 by name: %w", err)
	}
	_, err := d.cli(h3, "exec", "c3", "--", "ping", "-c", "2", "-i", "0.2", "-W", "2", "c1")
	return err
}

// showState is the last step: what h1 knows of the network, its
// forwarding database and its counters.
func (d *demo) showState() error {
	h1 := d.tb.Hosts[0]
	d.step("What h1 knows: the network's endpoints on every node and its peer VTEPs, the forwarding database (remote entries point at the other hosts' VTEPs), counters")
	for _, args := range [][]string{{"network", "inspect", "demo"}, {"fdb", "demo"}, {"stats"}} {
		if _, err := d.cli(h1, args...); err != nil {
			return err
		}
	}
	return nil
}

// services shows a service: a VIP on the network, balanced in the switch
// at the client's port to backends on the other hosts, without SNAT, and
// its port published on every host (the routing mesh).
func (d *demo) services(hosts []*testbed.Host) error {
	h1 := hosts[0]
	d.step("A service: a virtual IP on the network, backends w2 (h2) and w3 (h3), balanced at the client's own port (client-IP affinity, as iperf3 needs); its port %d published on every host for clients outside the overlay", publishedPort)
	if _, err := d.cli(h1, "service", "create", "web", "--network", "demo", "--affinity", "client-ip",
		"--publish", fmt.Sprintf("published=%d,target=5201", publishedPort)); err != nil {
		return err
	}
	d.service = "web"
	for _, h := range hosts[1:] {
		if err := waitFor(d.ctx, 10*time.Second, func() error {
			_, err := h.CLIContext(d.ctx, "service", "inspect", "web")
			return err
		}); err != nil {
			return fmt.Errorf("demo: service web did not reach %s: %w", h.Name, err)
		}
		w := "w" + strings.TrimPrefix(h.Name, "h")
		if _, err := d.cli(h, "run", "-d", "--network", "demo", "--service", "web", "--name", w, "--", "iperf3", "-s"); err != nil {
			return err
		}
		d.made = append(d.made, made{h, w})
		wctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
		err := testbed.WaitTCPListen(wctx, h.ContainerNetnsPath(w), 5201)
		cancel()
		if err != nil {
			return fmt.Errorf("demo: iperf3 server in %s: %w", w, err)
		}
	}
	if err := waitFor(d.ctx, 10*time.Second, func() error {
		_, err := h1.CLIContext(d.ctx, "exec", "c1", "--", "ping", "-c", "1", "-W", "1", "web")
		return err
	}); err != nil {
		return fmt.Errorf("demo: c1 cannot reach service web: %w", err)
	}
	for _, args := range [][]string{
		{"service", "ls"},
		{"exec", "c1", "--", "getent", "hosts", "web"},
		{"exec", "c1", "--", "ping", "-c", "2", "-i", "0.2", "-W", "2", "web"},
	} {
		if _, err := d.cli(h1, args...); err != nil {
			return err
		}
	}
	args := []string{"exec", "c1", "--", "iperf3", "-c", "web", "-t", fmt.Sprint(iperfSeconds)}
	fmt.Fprintf(d.out, "%s$ vxmesh %s\n", h1.Name, strings.Join(args, " "))
	out, err := h1.CLIContext(d.ctx, append(args[:len(args):len(args)], "-J")...)
	res, perr := testbed.ParseIperf3JSON([]byte(out))
	if perr != nil {
		return fmt.Errorf("demo: iperf3 to web: %v (%v)", perr, err)
	}
	fmt.Fprintf(d.out, "    c1 -> web (VIP -> a backend on another host): %.2f Gbit/s\n", res.Gbps())
	fmt.Fprintln(d.out, "    every host's backends, with this host's (h1's) connections to each:")
	if _, err = d.cli(h1, "service", "ps", "web"); err != nil {
		return err
	}
	return d.published(h1)
}

// published shows the routing mesh: a client outside the overlay (an
// underlay namespace) reaches web's published port on h, a host without
// a backend, and the backend that answers saw the client's own address.
func (d *demo) published(h *testbed.Host) error {
	d.step("The routing mesh: a client outside the overlay connects to web's published port %d on %s, which has no backend: %s -> tunnel -> a backend on another host, the replies steered back through %s", publishedPort, h.Name, h.Name, h.Name)
	peer, err := d.tb.AddUnderlayPeer("outside")
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "    outside: a namespace on the underlay with address %s, no vxmesh\n", peer.Addr)
	var svc api.Service
	if err := waitFor(d.ctx, 15*time.Second, func() error {
		if err := h.CLIJSON(&svc, "service", "inspect", "web"); err != nil {
			return err
		}
		for _, st := range svc.PublishState {
			if st.Node == h.Name && strings.HasPrefix(st.Published, fmt.Sprintf("published=%d,", publishedPort)) && st.State == "up" {
				return nil
			}
		}
		return fmt.Errorf("port %d not up on %s: %+v", publishedPort, h.Name, svc.PublishState)
	}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	args := []string{"iperf3", "-c", h.Addr, "-p", fmt.Sprint(publishedPort), "-t", "1", "--get-server-output"}
	fmt.Fprintf(d.out, "outside$ %s\n", strings.Join(args, " "))
	var res testbed.IperfResult
	var backend, client string
	// The first flows may wait for the port's path to the VIP: retry.
	if err := waitFor(d.ctx, 15*time.Second, func() error {
		out, err := exec.CommandContext(d.ctx, "nsenter", append([]string{"--net=" + peer.NetnsPath, "--"}, append(args, "-J")...)...).Output()
		var perr error
		if res, perr = testbed.ParseIperf3JSON(out); perr != nil {
			return fmt.Errorf("iperf3 to %s:%d: %v (%v)", h.Addr, publishedPort, perr, err)
		}
		var so struct {
			Text string `json:"server_output_text"`
		}
		if err := json.Unmarshal(out, &so); err != nil {
			return err
		}
		backend, client, err = serverSaw(so.Text)
		return err
	}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for _, b := range svc.Backends {
		if strings.Split(b.IP, "/")[0] == backend {
			backend = fmt.Sprintf("%s (%s on %s)", backend, b.Container, b.Node)
		}
	}
	fmt.Fprintf(d.out, "    outside -> %s:%d -> backend %s: %.2f Gbit/s\n", h.Addr, publishedPort, backend, res.Gbps())
	fmt.Fprintf(d.out, "    the backend saw the connection come from %s", client)
	if client != peer.Addr {
		fmt.Fprintln(d.out)
		return fmt.Errorf("demo: the backend saw %s, not the outside client's address %s", client, peer.Addr)
	}
	fmt.Fprintln(d.out, ": the outside client's own address (client-ip=preserve, no SNAT)")
	return nil
}

// iperf3Connected is iperf3 server's line for a test's data connection.
var iperf3Connected = regexp.MustCompile(`local (\S+) port \d+ connected to (\S+) port \d+`)

// serverSaw returns the local address and the peer address of the first
// data connection in an iperf3 server's text output: the backend, and
// the client as the backend saw it.
func serverSaw(text string) (local, peer string, err error) {
	m := iperf3Connected.FindStringSubmatch(text)
	if m == nil {
		return "", "", fmt.Errorf("iperf3 server output names no connection: %q", text)
	}
	return m[1], m[2], nil
}

// iperf runs an iperf3 server in c2 on host sh and a client in c1 on host
// ch against server, and prints the throughput.
func (d *demo) iperf(ch, sh *testbed.Host, server string) error {
	fmt.Fprintf(d.out, "%s$ vxmesh exec c2 -- iperf3 -s -1      (in the background)\n", sh.Name)
	srv := sh.Command(d.ctx, "exec", "c2", "--", "iperf3", "-s", "-1")
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return fmt.Errorf("demo: iperf3 server: %w", err)
	}
	defer func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}()
	wctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(wctx, sh.ContainerNetnsPath("c2"), 5201); err != nil {
		return fmt.Errorf("demo: iperf3 server in c2: %w: %s", err, srvOut.String())
	}
	args := []string{"exec", "c1", "--", "iperf3", "-c", server, "-t", fmt.Sprint(iperfSeconds), "-J"}
	fmt.Fprintf(d.out, "%s$ vxmesh %s\n", ch.Name, strings.Join(args, " "))
	out, err := ch.CLIContext(d.ctx, args...)
	res, perr := testbed.ParseIperf3JSON([]byte(out))
	if perr != nil {
		if d.ctx.Err() != nil {
			return d.ctx.Err()
		}
		return fmt.Errorf("demo: iperf3 client: %v (%v)", perr, err)
	}
	fmt.Fprintf(d.out, "    c1 -> c2: %.2f Gbit/s (%.1f MB in %.1f s, %d retransmits)\n",
		res.Gbps(), float64(res.ReceivedBytes)/1e6, res.Seconds, res.Retransmits)
	return nil
}

// waitFor polls f every 100 ms until it succeeds, timeout passes or ctx
// ends, and returns f's last error.
func waitFor(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cleanup removes what the demo made through the CLI, as a user would;
// the testbed's Close removes whatever is left after that.
func (d *demo) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The service first: its backends then leave without draining.
	if h1 := d.tb.Hosts[0]; d.service != "" && h1.Running() {
		fmt.Fprintf(d.out, "%s$ vxmesh service rm %s\n", h1.Name, d.service)
		if _, err := h1.CLIContext(ctx, "service", "rm", d.service); err != nil {
			fmt.Fprintln(d.out, indent(err.Error()))
		}
	}
	for _, m := range d.made {
		if !m.h.Running() {
			continue
		}
		fmt.Fprintf(d.out, "%s$ vxmesh rm %s\n", m.h.Name, m.name)
		if _, err := m.h.CLIContext(ctx, "rm", m.name); err != nil {
			fmt.Fprintln(d.out, indent(err.Error()))
		}
	}
	if h1 := d.tb.Hosts[0]; d.network != "" && h1.Running() {
		fmt.Fprintf(d.out, "%s$ vxmesh network rm %s\n", h1.Name, d.network)
		// Until h1 hears that the other hosts' containers are gone, it
		// refuses: retry for a while.
		if err := waitFor(ctx, 10*time.Second, func() error {
			_, err := h1.CLIContext(ctx, "network", "rm", d.network)
			return err
		}); err != nil {
			fmt.Fprintln(d.out, indent(err.Error()))
		}
	}
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
