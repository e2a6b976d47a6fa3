package main

// The tap-relay row (issue 12): the ceiling of any switch that, like
// vxmesh, moves a container's frames through TAP devices in userspace.
// Two containers each get a TAP (IFF_VNET_HDR, checksum and TSO offloads
// on, as vxmesh opens them); a relay process (the hidden subcommand
// tapRelayCmd of the bench binary) copies every frame read from one TAP
// into the other, one OS thread per direction in blocking reads: no
// switching, no lookups, no batching, no Go netpoller. Its throughput is
// what the two copies across the TAP boundary (read: kernel to user;
// write: user to a new skb) leave on this machine; its request/response
// latency is the two thread wake-ups per round trip. vxmesh's one-host
// row divided by this row says how much of the gap to the Linux bridge
// is vxmesh's, and this row divided by the bridge's how much is the TAP
// boundary's, which no userspace code can remove without zero-copy into
// the TAP (vhost-net), absent here.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

const (
	// tapRelayTopology is the row (and -only name).
	tapRelayTopology = "tap-relay"
	// tapRelayCmd is the hidden subcommand that runs the relay.
	tapRelayCmd = "tap-relay"
	// tapRelayBuf holds the virtio header and the largest super-segment.
	tapRelayBuf = 10 + 65536 + 64
)

// tapRelayMain runs the relay: it creates the two TAPs named by -a and
// -b in the current namespace, prints "ready" and relays until killed.
func tapRelayMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(tapRelayCmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	a := fs.String("a", "", "first TAP's name")
	b := fs.String("b", "", "second TAP's name")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *a == "" || *b == "" {
		fmt.Fprintln(stderr, "tap-relay: -a and -b are required")
		return 2
	}
	fa, err := openRelayTAP(*a)
	if err != nil {
		fmt.Fprintln(stderr, "tap-relay:", err)
		return 1
	}
	fb, err := openRelayTAP(*b)
	if err != nil {
		fmt.Fprintln(stderr, "tap-relay:", err)
		return 1
	}
	fmt.Fprintln(stdout, "ready")
	errc := make(chan error, 2)
	go func() { errc <- relayFrames(fa, fb) }()
	go func() { errc <- relayFrames(fb, fa) }()
	fmt.Fprintln(stderr, "tap-relay:", <-errc)
	return 1
}

// openRelayTAP creates a TAP with a virtio header, checksum and TSO
// offloads, and a blocking descriptor.
func openRelayTAP(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4|unix.TUN_F_TSO6); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETOFFLOAD %s: %w", name, err)
	}
	return fd, nil
}

// relayFrames copies every frame read from in to out, on a thread of its
// own. A frame the other TAP refuses (down: EIO; queue full: ENOBUFS or
// EAGAIN) is dropped, as a switch would; a read error ends it.
func relayFrames(in, out int) error {
	runtime.LockOSThread()
	buf := make([]byte, tapRelayBuf)
	for {
		n, err := unix.Read(in, buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("read: %w", err)
		}
		_, _ = unix.Write(out, buf[:n])
	}
}

// benchTAPRelay measures setupTAPRelay's namespaces like every row.
func benchTAPRelay(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	return measureSetup(ctx, cfg, prefix, log, setupTAPRelay)
}

// setupTAPRelay starts the relay and builds two container namespaces
// joined by it.
func setupTAPRelay(ctx context.Context, cfg config, prefix string, log io.Writer) (b *built, err error) {
	fmt.Fprintln(log, "tap-relay: two TAPs joined by a minimal userspace relay")
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	pfx := prefix + "-"
	b = &built{}
	defer b.closeOnError(&err)
	b.onClose(func() {
		if err := testbed.Cleanup(pfx); err != nil {
			fmt.Fprintln(log, "tap-relay: cleanup:", err)
		}
	})
	taps := [2]string{pfx + "t1", pfx + "t2"}
	relay := exec.CommandContext(ctx, self, tapRelayCmd, "-a", taps[0], "-b", taps[1])
	relay.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	relayErr := &strings.Builder{}
	relay.Stderr = relayErr
	stdout, err := relay.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := relay.Start(); err != nil {
		return nil, fmt.Errorf("tap-relay: %w", err)
	}
	b.onClose(func() {
		_ = relay.Process.Kill()
		_ = relay.Wait()
	})
	b.explain = func(err error) error { return fmt.Errorf("%w (relay: %s)", err, relayErr.String()) }
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		return nil, fmt.Errorf("tap-relay did not start: %q %v: %s", line, err, relayErr.String())
	}
	if b.pair, err = wireRelayTAPs(pfx, taps, cfg.mtu); err != nil {
		return nil, err
	}
	b.daemons = []int{relay.Process.Pid}
	return b, nil
}

// wireRelayTAPs moves each TAP into a container namespace of its own
// and addresses it as eth0 in one /24, with vxmesh's container settings
// (MTU, gso_max_segs 64).
func wireRelayTAPs(pfx string, taps [2]string, mtu int) (pair, error) {
	var cmds [][]string
	for i, c := range []string{"c1", "c2"} {
		ns := pfx + c
		cmds = append(cmds,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"link", "set", taps[i], "netns", ns},
			[]string{"-n", ns, "link", "set", taps[i], "name", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "address", fmt.Sprintf("02:42:0a:5a:00:%02x", i+2), "mtu", fmt.Sprint(mtu), "gso_max_segs", "64", "up"},
			[]string{"-n", ns, "addr", "add", fmt.Sprintf("10.90.0.%d/24", i+2), "dev", "eth0"},
		)
	}
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return pair{}, fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return pair{
		c1:   filepath.Join(testbed.NetnsDir, pfx+"c1"),
		c2:   filepath.Join(testbed.NetnsDir, pfx+"c2"),
		c2IP: "10.90.0.3",
	}, nil
}
