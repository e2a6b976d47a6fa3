//go:build linux

package esp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"time"

	"golang.org/x/sys/unix"
)

// TestLinuxXFRMInterop checks the wire format against the Linux kernel's
// ESP (xfrm, rfc4106(gcm(aes)), ESP-in-UDP, ESN) in two network namespaces:
// packets sealed here are decrypted by the kernel and delivered to a UDP
// socket on port 4789, and packets the kernel encrypts open here. It runs
// with the sequence number's high 32 bits at 0 and at 1. It needs root
// (testenv) and skips on a kernel without the optional rfc4106(gcm(aes)).
func TestLinuxXFRMInterop(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	for _, hi := range []uint32{0, 1} {
		t.Run(fmt.Sprintf("seq-hi-%d", hi), func(t *testing.T) { xfrmInterop(t, hi) })
	}
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// ipCmdOrSkip is ipCmd, but skips the test if the kernel lacks
// rfc4106(gcm(aes)) (no gcm/ctr/ghash built in or loadable).
func ipCmdOrSkip(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil && strings.Contains(string(out), "algorithm not found") {
		testenv.SkipWithout(t, testenv.KernelRFC4106, string(bytes.TrimSpace(out)))
	}
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// inNetns runs f on a thread in the named network namespace; sockets
// created by f stay in it.
func inNetns(t *testing.T, name string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	ns, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(err) // never leave a thread in the test namespace
		}
	}()
	f()
}

func xfrmInterop(t *testing.T, hi uint32) {
	a, b := fmt.Sprintf("vxesp-a-%d-%d", os.Getpid(), hi), fmt.Sprintf("vxesp-b-%d-%d", os.Getpid(), hi)
	const ipA, ipB = "10.231.0.1", "10.231.0.2"
	ipCmd(t, "netns", "add", a)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", a).Run() })
	ipCmd(t, "netns", "add", b)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", b).Run() })
	ipCmd(t, "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
	ipCmd(t, "-n", a, "addr", "add", ipA+"/24", "dev", "va")
	ipCmd(t, "-n", b, "addr", "add", ipB+"/24", "dev", "vb")
	for _, ns := range []string{a, b} {
		ipCmd(t, "-n", ns, "link", "set", "lo", "up")
	}
	ipCmd(t, "-n", a, "link", "set", "va", "up")
	ipCmd(t, "-n", b, "link", "set", "vb", "up")

	keyAB, saltAB := []byte("vxmesh-a-to-b-k!"), []byte{1, 2, 3, 4}
	keyBA, saltBA := []byte("vxmesh-b-to-a-key-256-bit-long!!"), []byte{5, 6, 7, 8}
	const spiAB, spiBA = 0x1001, 0x2002
	hexKey := func(k, s []byte) string { return "0x" + hex.EncodeToString(k) + hex.EncodeToString(s) }
	seqHi := fmt.Sprint(hi)
	// B receives A->B (sealed here) and sends B->A (opened here).
	ipCmdOrSkip(t, "-n", b, "xfrm", "state", "add", "src", ipA, "dst", ipB, "proto", "esp", "spi", fmt.Sprint(spiAB),
		"reqid", "1", "mode", "transport", "replay-window", "128", "replay-seq-hi", seqHi, "flag", "esn",
		"aead", "rfc4106(gcm(aes))", hexKey(keyAB, saltAB), "128", "encap", "espinudp", "4500", "4500", "0.0.0.0")
	ipCmd(t, "-n", b, "xfrm", "state", "add", "src", ipB, "dst", ipA, "proto", "esp", "spi", fmt.Sprint(spiBA),
		"reqid", "2", "mode", "transport", "replay-window", "128", "replay-oseq-hi", seqHi, "flag", "esn",
		"aead", "rfc4106(gcm(aes))", hexKey(keyBA, saltBA), "128", "encap", "espinudp", "4500", "4500", "0.0.0.0")
	ipCmd(t, "-n", b, "xfrm", "policy", "add", "src", ipB, "dst", ipA, "proto", "udp", "dport", "4789", "dir", "out",
		"tmpl", "src", ipB, "dst", ipA, "proto", "esp", "reqid", "2", "mode", "transport")

	var espA, espB, vxlanB, sendB *net.UDPConn
	listen := func(addr string) *net.UDPConn {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netipMust(addr)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	inNetns(t, a, func() { espA = listen(ipA + ":4500") })
	inNetns(t, b, func() {
		espB = listen(ipB + ":4500")
		vxlanB = listen(ipB + ":4789")
		sendB = listen(ipB + ":0")
	})
	// The kernel decapsulates ESP-in-UDP only on a socket marked for it,
	// as an IKE daemon marks its port 4500 socket.
	rc, _ := espB.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_ENCAP, unix.UDP_ENCAP_ESPINUDP)
	})
	if serr != nil {
		t.Fatal("UDP_ENCAP:", serr)
	}

	// A -> B: sealed here, opened by the kernel, delivered to B:4789.
	out, err := NewOutbound(spiAB, keyAB, saltAB)
	if err != nil {
		t.Fatal(err)
	}
	out.seq.Store(uint64(hi) << 32)
	for i := range 3 {
		payload := []byte(fmt.Sprintf("vxlan datagram %d sealed by vxmesh", i))
		buf := make([]byte, 256, 512)
		const s = 64
		binary.BigEndian.PutUint16(buf[s:], 40000)
		binary.BigEndian.PutUint16(buf[s+2:], 4789)
		binary.BigEndian.PutUint16(buf[s+4:], uint16(8+len(payload)))
		e := s + 8 + copy(buf[s+8:], payload)
		es, ee, err := out.Seal(buf, s, e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := espA.WriteToUDPAddrPort(buf[es:ee], netipMust(ipB+":4500")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 2048)
		vxlanB.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, from, err := vxlanB.ReadFromUDPAddrPort(got)
		if err != nil {
			st, _ := exec.Command("ip", "-n", b, "-s", "xfrm", "state").CombinedOutput()
			t.Fatalf("packet %d not delivered by the kernel: %v\n%s", i, err, st)
		}
		if !bytes.Equal(got[:n], payload) || from.Port() != 40000 || from.Addr().String() != ipA {
			t.Fatalf("kernel delivered %q from %v", got[:n], from)
		}
	}

	// B -> A: encrypted by the kernel, opened here.
	in, err := NewInbound(spiBA, keyBA, saltBA)
	if err != nil {
		t.Fatal(err)
	}
	if hi > 0 {
		in.win.top = uint64(hi) << 32 // as if the SA had been running
	}
	for i := range 3 {
		payload := []byte(fmt.Sprintf("datagram %d encrypted by the kernel", i))
		if _, err := sendB.WriteToUDPAddrPort(payload, netipMust(ipA+":4789")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		espA.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := espA.ReadFromUDPAddrPort(buf[64:])
		if err != nil {
			t.Fatalf("no ESP packet from the kernel: %v", err)
		}
		is, ie, nh, err := in.Open(buf, 64, 64+n)
		if err != nil {
			t.Fatalf("packet %d from the kernel (seq %d): %v", i, binary.BigEndian.Uint32(buf[68:]), err)
		}
		u := buf[is:ie]
		if nh != ProtoUDP || len(u) < 8 || binary.BigEndian.Uint16(u[2:]) != 4789 || !bytes.Equal(u[8:], payload) {
			t.Fatalf("opened next header %d, %x", nh, u)
		}
		if st := in.Stats(); st.Seq != uint64(hi)<<32|uint64(i+1) {
			t.Fatalf("kernel sequence number %#x, want %#x", st.Seq, uint64(hi)<<32|uint64(i+1))
		}
	}
}

func netipMust(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
