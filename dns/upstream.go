package dns

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// ParseUpstream parses IP or IP:PORT (an IPv6 address with a port in
// brackets); the port defaults to 53.
func ParseUpstream(s string) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("dns upstream %q: want IP or IP:PORT", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// ParseUpstreams parses a comma-separated list of ParseUpstream forms.
func ParseUpstreams(list string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, f := range strings.Split(list, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		ap, err := ParseUpstream(f)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}

// ResolvConfUpstreams returns the nameservers of a resolv.conf file (port
// 53), skipping the embedded resolver's own 127.0.0.11, which would only
// forward to itself. A missing file means none.
func ResolvConfUpstreams(path string) ([]netip.AddrPort, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	self := netip.MustParseAddrPort(ListenAddr).Addr()
	var out []netip.AddrPort
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		// A scoped IPv6 address (fe80::1%eth0) is kept with its zone.
		a, err := netip.ParseAddr(fields[1])
		if err != nil || a.Unmap() == self {
			continue
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return out, sc.Err()
}
