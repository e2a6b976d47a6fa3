package e2e

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/sandbox"
)

// sendRA sends count router advertisements for prefix 2001:db8:1::/64 to
// ff02::1 from eth0 of the namespace at nsPath, as a hostile container
// would (hop limit 255, a prefix for SLAAC, a default route lifetime).
func sendRA(t *testing.T, nsPath string, count int) {
	t.Helper()
	ra := make([]byte, 16+32)
	ra[0], ra[4] = 134, 64                      // type, cur hop limit
	binary.BigEndian.PutUint16(ra[6:], 1800)    // router lifetime
	pi := ra[16:]                               // prefix information
	pi[0], pi[1], pi[2], pi[3] = 3, 4, 64, 0xc0 // on-link, autonomous
	binary.BigEndian.PutUint32(pi[4:], 86400)   // valid
	binary.BigEndian.PutUint32(pi[8:], 14400)   // preferred
	prefix := netip.MustParseAddr("2001:db8:1::").As16()
	copy(pi[16:], prefix[:])
	err := sandbox.RunInNetns(nsPath, func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255)
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		to := &unix.SockaddrInet6{Addr: netip.MustParseAddr("ff02::1").As16(), ZoneId: uint32(ifc.Index)}
		// The kernel fills in the checksum of raw ICMPv6 sockets. Until
		// the link-local address has passed DAD there is no source.
		deadline := time.Now().Add(5 * time.Second)
		for sent := 0; sent < count; {
			err := unix.Sendto(fd, ra, 0, to)
			switch {
			case err == nil:
				sent++
			case err == unix.EADDRNOTAVAIL && time.Now().Before(deadline):
				time.Sleep(50 * time.Millisecond)
			default:
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("sending router advertisements from %s: %v", nsPath, err)
	}
}

// TestContainerRouterAdvertisementIsDropped: container interfaces ignore
// router advertisements (accept_ra=0), and one a container sends is
// dropped by the switch ("ra-guard") before it reaches any other
// container, even one made to accept them.
func TestContainerRouterAdvertisementIsDropped(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.23.0.0/24")
	e.run("c1", "web")
	e.run("c2", "web")
	for _, c := range []string{"c1", "c2"} {
		if got := strings.TrimSpace(e.cli("exec", c, "--", "cat", "/proc/sys/net/ipv6/conf/eth0/accept_ra")); got != "0" {
			t.Errorf("%s: accept_ra = %q, want 0", c, got)
		}
	}
	c2ns := e.h.ContainerNetnsPath("c2")
	if _, err := testbed.InNetns(context.Background(), c2ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1"); err != nil {
		t.Fatal(err)
	}
	var before api.Stats
	e.json(&before, "stats")
	sendRA(t, e.h.ContainerNetnsPath("c1"), 3)
	deadline := time.Now().Add(10 * time.Second)
	var after api.Stats
	for {
		e.json(&after, "stats")
		if dropsMatching(after, "web", "ra", "guard") >= dropsMatching(before, "web", "ra", "guard")+3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if b, a := dropsMatching(before, "web", "ra", "guard"), dropsMatching(after, "web", "ra", "guard"); a < b+3 {
		t.Errorf("ra-guard drops %d -> %d, want 3 more; stats %+v", b, a, after)
	}
	out, err := testbed.InNetns(context.Background(), c2ns, "ip", "-6", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "2001:db8:1:") {
		t.Errorf("c2 took an address from c1's router advertisement:\n%s", out)
	}
}
