package main

// More two-host rows (issue 12):
//   - kernel-vxlan-sw: kernel-vxlan with the underlay veths' tunnel and
//     generic segmentation offloads off (ethtool -K), so the kernel
//     segments VXLAN super-packets in software before the underlay, as it
//     must for a NIC without UDP tunnel segmentation; vxmesh segments in
//     software too, so this is the like-for-like anchor.
//   - vxmesh-overlay-rxq: vxmesh-overlay with the daemons' VTEP receiving
//     on -rx-sockets SO_REUSEPORT sockets, one loop each (with its rows
//     in the anchors table).
//   - wireguard-go: golang.zx2c4.com/wireguard between the two host
//     namespaces (with -wireguard-go PATH), the userspace encrypted
//     anchor of vxmesh-esp. Keys are X25519 pairs made here and set
//     through wireguard-go's UAPI socket, so wireguard-tools is not needed.

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

// wireguardTopology is the row (and -only name) of wireguard-go.
const wireguardTopology = "wireguard-go"

// softSegOffloads are the ethtool -K features kernel-vxlan-sw turns off.
var softSegOffloads = []string{"tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off", "gso", "off", "tso", "off"}

// benchKernelVXLANSoftSeg is benchKernelVXLAN with software segmentation
// before the underlay.
func benchKernelVXLANSoftSeg(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	return measureSetup(ctx, cfg, prefix, log, setupKernelVXLANSoftSeg)
}

// setupKernelVXLANSoftSeg is setupKernelVXLAN with the underlay's
// segmentation offloads off.
func setupKernelVXLANSoftSeg(ctx context.Context, cfg config, prefix string, log io.Writer) (*built, error) {
	if _, err := exec.LookPath("ethtool"); err != nil {
		return nil, fmt.Errorf("missing ethtool: apt-get install ethtool (make deps bench)")
	}
	fmt.Fprintln(log, "kernel-vxlan-sw: kernel VXLAN with the underlay veths' segmentation offloads off")
	b, tb, err := kernelVXLANTestbed(cfg, prefix, log)
	if err != nil {
		return nil, err
	}
	if err := disableUnderlayOffloads(ctx, tb); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// disableUnderlayOffloads turns softSegOffloads off on both ends of each
// host's underlay veth: eth0 in the host, the bridge port named after the
// host in the underlay namespace.
func disableUnderlayOffloads(ctx context.Context, tb *testbed.Testbed) error {
	for _, h := range tb.Hosts {
		for _, d := range [][2]string{{h.Netns, "eth0"}, {tb.Underlay, h.Name}} {
			args := append([]string{"netns", "exec", d[0], "ethtool", "-K", d[1]}, softSegOffloads...)
			if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
			}
		}
	}
	return nil
}

// rxqTopology is the row (and -only name) of vxmesh-overlay with several
// VTEP receive sockets.
const rxqTopology = "vxmesh-overlay-rxq"

// benchVxmeshOverlayRxq is benchVxmeshOverlay with the daemons started
// with --rx-sockets cfg.rxSockets.
func benchVxmeshOverlayRxq(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	fmt.Fprintf(log, "vxmesh-overlay-rxq: daemons with --rx-sockets %d\n", cfg.rxSockets)
	return vxmeshOverlay(ctx, cfg, prefix, log, false, "--rx-sockets", fmt.Sprint(cfg.rxSockets))
}

// usplitTopology is the vxmesh-overlay row with the daemons' kernel
// tunnel off (--kernel-tunnel=off): TCP super-segments are split into
// datagrams in userspace, as the default (auto) does where a forward
// firewall could drop the kernel's super-packets.
const usplitTopology = "vxmesh-overlay-usplit"

// benchVxmeshOverlayUserspaceSplit is benchVxmeshOverlay with the daemons
// started with --kernel-tunnel=off.
func benchVxmeshOverlayUserspaceSplit(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	fmt.Fprintln(log, "vxmesh-overlay-usplit: daemons with --kernel-tunnel=off")
	return vxmeshOverlay(ctx, cfg, prefix, log, false, "--kernel-tunnel=off")
}

// benchWireguardGo measures wireguard-go between the testbed's two host
// namespaces (no containers: the hosts' own stacks are the endpoints).
func benchWireguardGo(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	return measureSetup(ctx, cfg, prefix, log, setupWireguardGo)
}

// setupWireguardGo builds two testbed hosts joined by wireguard-go.
func setupWireguardGo(ctx context.Context, cfg config, prefix string, log io.Writer) (b *built, err error) {
	if cfg.wireguardGo == "" {
		return nil, fmt.Errorf("no wireguard-go binary (-wireguard-go PATH)")
	}
	fmt.Fprintln(log, "wireguard-go: two hosts with a wireguard-go tunnel")
	b = &built{}
	defer b.closeOnError(&err)
	tb, err := testbed.New(testbed.Options{Hosts: 2, Prefix: prefix + "-"})
	if err != nil {
		return nil, err
	}
	b.onClose(func() {
		if err := tb.Close(); err != nil {
			fmt.Fprintln(log, "wireguard-go: cleanup:", err)
		}
	})
	keys := make([]*ecdh.PrivateKey, 2)
	for i := range keys {
		if keys[i], err = ecdh.X25519().GenerateKey(rand.Reader); err != nil {
			return nil, err
		}
	}
	mtu := min(cfg.mtu, espMaxMTU)
	for i, h := range tb.Hosts[:2] {
		peer := tb.Hosts[1-i]
		// Interface names are global in the UAPI socket directory.
		iface := strings.TrimSuffix(prefix, "-") + fmt.Sprintf("wg%d", i+1)
		pid, stop, err := startWireguardGo(ctx, cfg.wireguardGo, h.NetnsPath, iface)
		if err != nil {
			return nil, err
		}
		b.onClose(stop)
		// Charged like vxmesh's daemons: the row's CPU s/GB is then
		// wireguard-go's, like for like.
		b.daemons = append(b.daemons, pid)
		conf := wgConfig{
			PrivateKey: keys[i].Bytes(),
			ListenPort: 51820,
			PeerKey:    keys[1-i].PublicKey().Bytes(),
			Endpoint:   net.JoinHostPort(peer.Addr, "51820"),
			AllowedIP:  fmt.Sprintf("10.89.2.%d/32", 2-i),
		}
		if err := wgSet(filepath.Join(wgSockDir, iface+".sock"), conf); err != nil {
			return nil, fmt.Errorf("wireguard-go %s: %w", iface, err)
		}
		addr := fmt.Sprintf("10.89.2.%d", i+1)
		for _, a := range [][]string{
			{"-n", h.Netns, "addr", "add", addr + "/24", "dev", iface},
			{"-n", h.Netns, "link", "set", iface, "mtu", fmt.Sprint(mtu), "up"},
		} {
			if out, err := exec.Command("ip", a...).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(a, " "), err, strings.TrimSpace(string(out)))
			}
		}
		if i == 0 {
			b.c1 = h.NetnsPath
		} else {
			b.c2, b.c2IP = h.NetnsPath, addr
		}
	}
	fmt.Fprintf(log, "wireguard-go: MTU %d\n", mtu)
	return b, nil
}

// wgSockDir is where wireguard-go puts its UAPI sockets.
const wgSockDir = "/var/run/wireguard"

// startWireguardGo runs `wireguard-go -f iface` in the namespace at netns
// and waits for its UAPI socket; stop ends it. pid is wireguard-go's
// (nsenter without --fork execs it in its own place).
func startWireguardGo(ctx context.Context, bin, netns, iface string) (pid int, stop func(), err error) {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+netns, "--", bin, "-f", iface)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("wireguard-go: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	sock := filepath.Join(wgSockDir, iface+".sock")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return cmd.Process.Pid, stop, nil
		}
		select {
		case <-done:
			return 0, nil, fmt.Errorf("wireguard-go %s exited: %s", iface, strings.TrimSpace(out.String()))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return 0, nil, fmt.Errorf("wireguard-go %s: no UAPI socket %s after 10s: %s", iface, sock, strings.TrimSpace(out.String()))
		}
	}
}

// wgConfig is one side of a two-peer WireGuard tunnel.
type wgConfig struct {
	PrivateKey []byte // X25519, 32 bytes
	ListenPort int
	PeerKey    []byte // the peer's public key
	Endpoint   string // the peer's ip:port
	AllowedIP  string // the peer's tunnel address as a prefix
}

// uapi returns the UAPI set operation for c (the text protocol of
// wireguard.com/xplatform).
func (c wgConfig) uapi() string {
	return fmt.Sprintf("set=1\nprivate_key=%s\nlisten_port=%d\nreplace_peers=true\npublic_key=%s\nendpoint=%s\nreplace_allowed_ips=true\nallowed_ip=%s\n\n",
		hex.EncodeToString(c.PrivateKey), c.ListenPort, hex.EncodeToString(c.PeerKey), c.Endpoint, c.AllowedIP)
}

// wgSet applies c through the UAPI socket at sock and checks the answer.
func wgSet(sock string, c wgConfig) error {
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, c.uapi()); err != nil {
		return err
	}
	return readUAPIErrno(bufio.NewReader(conn))
}

// readUAPIErrno reads a UAPI answer ("errno=N" and an empty line) and
// returns an error unless N is 0.
func readUAPIErrno(r *bufio.Reader) error {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("UAPI answer: %w", err)
		}
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "errno="); ok {
			if v != "0" {
				return fmt.Errorf("UAPI set failed: errno=%s", v)
			}
			return nil
		}
	}
}
