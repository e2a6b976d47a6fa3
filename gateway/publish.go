package gateway

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Publish is one published port of a container, `docker run -p`'s
// `[HOSTIP:]HOSTPORT:PORT[/udp]`: the host listens on HostIP:HostPort
// (all addresses when HostIP is not valid) and sends each connection or
// flow to the container's Port.
type Publish struct {
	HostIP   netip.Addr
	HostPort uint16
	Port     uint16
	// Proto is "tcp" or "udp".
	Proto string
	// ClientIP is the flows' source address mode (not part of the
	// `run -p` form: its zero value is `run -p`'s).
	ClientIP ClientIP
}

// ParsePublish parses `[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]` (IPv4 HOSTIP;
// 0.0.0.0 means every address, as no HOSTIP does).
func ParsePublish(s string) (Publish, error) {
	p := Publish{Proto: "tcp"}
	rest := s
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		rest, p.Proto = s[:i], s[i+1:]
		if p.Proto != "tcp" && p.Proto != "udp" {
			return Publish{}, fmt.Errorf("publish %q: protocol %q: want tcp or udp", s, p.Proto)
		}
	}
	parts := strings.Split(rest, ":")
	switch len(parts) {
	case 2:
	case 3:
		ip, err := netip.ParseAddr(parts[0])
		if err != nil || !ip.Is4() {
			return Publish{}, fmt.Errorf("publish %q: host address %q: want an IPv4 address", s, parts[0])
		}
		if !ip.IsUnspecified() {
			p.HostIP = ip
		}
		parts = parts[1:]
	default:
		return Publish{}, fmt.Errorf("publish %q: want [HOSTIP:]HOSTPORT:PORT[/udp]", s)
	}
	var err error
	if p.HostPort, err = parsePort(parts[0]); err != nil {
		return Publish{}, fmt.Errorf("publish %q: host port: %s", s, err)
	}
	if p.Port, err = parsePort(parts[1]); err != nil {
		return Publish{}, fmt.Errorf("publish %q: container port: %s", s, err)
	}
	return p, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a port number", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return uint16(n), nil
}

// String returns p in ParsePublish's form, HOSTIP only when set and the
// protocol always.
func (p Publish) String() string {
	s := strconv.Itoa(int(p.HostPort)) + ":" + strconv.Itoa(int(p.Port)) + "/" + p.Proto
	if p.HostIP.IsValid() {
		s = p.HostIP.String() + ":" + s
	}
	return s
}

// hostAddr is where the host listens.
func (p Publish) hostAddr() string {
	ip := "0.0.0.0"
	if p.HostIP.IsValid() {
		ip = p.HostIP.String()
	}
	return ip + ":" + strconv.Itoa(int(p.HostPort))
}
