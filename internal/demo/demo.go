// Package demo implements `vxmesh demo`: it builds a one-host testbed (a
// network namespace running a vxmesh daemon), walks through the CLI flow a
// user would follow, printing every command it runs and its output, and
// removes everything it made, also when interrupted.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

// iperfSeconds is the length of the demo's TCP transfer.
const iperfSeconds = 5

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
func Run(ctx context.Context, out io.Writer, binary string) (err error) {
	if err := CheckPrereqs(); err != nil {
		return err
	}
	tb, err := testbed.New(testbed.Options{Hosts: 1, Binary: binary, Prefix: "vxdemo" + testbed.RandomID(2) + "-"})
	if err != nil {
		return err
	}
	d := &demo{ctx: ctx, out: out, h: tb.Hosts[0]}
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
	h       *testbed.Host
	made    []string // containers to remove
	network string
}

func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.out, "\n==> "+format+"\n", args...)
}

// cli prints and runs a vxmesh command, echoing its output indented.
func (d *demo) cli(args ...string) (string, error) {
	fmt.Fprintf(d.out, "$ vxmesh %s\n", strings.Join(args, " "))
	out, err := d.h.CLIContext(d.ctx, args...)
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

func (d *demo) steps() error {
	h := d.h
	d.step("Starting a vxmesh daemon on host %s (network namespace %s)", h.Name, h.Netns)
	fmt.Fprintf(d.out, "$ %s\n", strings.Join(h.DaemonArgs(), " "))
	if err := h.StartDaemon(); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "    ready; API socket %s, log %s\n", h.Socket, h.LogFile)

	d.step("Creating an overlay network")
	if _, err := d.cli("network", "create", "demo", "--subnet", "10.42.0.0/24"); err != nil {
		return err
	}
	d.network = "demo"
	if _, err := d.cli("network", "ls"); err != nil {
		return err
	}

	d.step("Starting two containers (named network namespaces with eth0 on the network)")
	for _, c := range []string{"c1", "c2"} {
		if _, err := d.cli("run", "-d", "--network", "demo", "--name", c, "--", "sleep", "infinity"); err != nil {
			return err
		}
		d.made = append(d.made, c)
	}
	if _, err := d.cli("ps"); err != nil {
		return err
	}
	var eps []struct {
		Name string `json:"name"`
		IP   string `json:"ip"`
	}
	if err := h.CLIJSON(&eps, "endpoint", "ls"); err != nil {
		return err
	}
	ips := map[string]string{}
	for _, e := range eps {
		ips[e.Name] = strings.Split(e.IP, "/")[0]
	}
	if ips["c1"] == "" || ips["c2"] == "" {
		return fmt.Errorf("demo: endpoint ls does not show c1 and c2: %+v", eps)
	}
	if _, err := d.cli("exec", "c1", "--", "ip", "-brief", "address", "show", "eth0"); err != nil {
		return err
	}

	d.step("Ping c1 -> c2 (%s) through the vxmesh switch", ips["c2"])
	if _, err := d.cli("exec", "c1", "--", "ping", "-c", "3", "-i", "0.2", "-W", "2", ips["c2"]); err != nil {
		return err
	}

	d.step("TCP throughput c1 -> c2 with iperf3 (%d s)", iperfSeconds)
	if err := d.iperf(ips["c2"]); err != nil {
		return err
	}

	d.step("Switch counters and the forwarding database")
	if _, err := d.cli("stats"); err != nil {
		return err
	}
	if _, err := d.cli("fdb", "demo"); err != nil {
		return err
	}
	return nil
}

func (d *demo) iperf(server string) error {
	h := d.h
	fmt.Fprintf(d.out, "$ vxmesh exec c2 -- iperf3 -s -1      (in the background)\n")
	srv := h.Command(d.ctx, "exec", "c2", "--", "iperf3", "-s", "-1")
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
	if err := testbed.WaitTCPListen(wctx, h.ContainerNetnsPath("c2"), 5201); err != nil {
		return fmt.Errorf("demo: iperf3 server in c2: %w: %s", err, srvOut.String())
	}
	args := []string{"exec", "c1", "--", "iperf3", "-c", server, "-t", fmt.Sprint(iperfSeconds), "-J"}
	fmt.Fprintf(d.out, "$ vxmesh %s\n", strings.Join(args, " "))
	out, err := h.CLIContext(d.ctx, args...)
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

// cleanup removes what the demo made through the CLI, as a user would;
// the testbed's Close removes whatever is left after that.
func (d *demo) cleanup() {
	if !d.h.Running() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, c := range d.made {
		fmt.Fprintf(d.out, "$ vxmesh rm %s\n", c)
		if _, err := d.h.CLIContext(ctx, "rm", c); err != nil {
			fmt.Fprintln(d.out, indent(err.Error()))
		}
	}
	if d.network != "" {
		fmt.Fprintf(d.out, "$ vxmesh network rm %s\n", d.network)
		if _, err := d.h.CLIContext(ctx, "network", "rm", d.network); err != nil {
			fmt.Fprintln(d.out, indent(err.Error()))
		}
	}
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
