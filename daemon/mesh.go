package daemon

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// The routing mesh's control plane (docs/architecture.md, "Published
// ports: the routing mesh"): a service's published ports, in its record
// (svcRecord.Publish, canonical meshPort strings), are opened by every
// host (mode=ingress) or by the hosts with a local backend (mode=host)
// as gateway.Ports towards the service (mesh_listen.go).

// Published port modes and client address modes.
const (
	meshIngress    = "ingress"
	meshHost       = "host"
	clientPreserve = "preserve"
	clientSNAT     = "snat"
	clientProxyV2  = "proxy-v2"
	maxMeshPorts   = 64
)

// meshPort is one published port of a service.
type meshPort struct {
	published, target uint16
	proto             string // tcp or udp
	mode              string // ingress or host
	clientIP          string // preserve, snat or proxy-v2
}

// String is the canonical form, the one records hold.
func (m meshPort) String() string {
	return "published=" + strconv.Itoa(int(m.published)) + ",target=" + strconv.Itoa(int(m.target)) +
		",protocol=" + m.proto + ",mode=" + m.mode + ",client-ip=" + m.clientIP
}

// portKey is what two published ports must not share: PORT/PROTO.
func (m meshPort) portKey() string { return strconv.Itoa(int(m.published)) + "/" + m.proto }

func (m meshPort) lbProto() uint8 {
	if m.proto == "udp" {
		return packet.ProtoUDP
	}
	return packet.ProtoTCP
}

// parseMeshPort parses a --publish value: the long form
// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host][,client-ip=preserve|snat|proxy-v2]
// or Docker's short form P:T[/udp].
func parseMeshPort(s string) (meshPort, error) {
	m := meshPort{proto: "tcp", mode: meshIngress, clientIP: clientPreserve}
	if !strings.Contains(s, "=") {
		return parseMeshShort(s, m)
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return m, fmt.Errorf("publish %q: %q: want KEY=VALUE", s, kv)
		}
		if seen[k] {
			return m, fmt.Errorf("publish %q: %s given twice", s, k)
		}
		seen[k] = true
		var err error
		switch k {
		case "published":
			m.published, err = parsePortNumber(v)
		case "target":
			m.target, err = parsePortNumber(v)
		case "protocol":
			m.proto, err = oneOf(v, "tcp", "udp")
		case "mode":
			m.mode, err = oneOf(v, meshIngress, meshHost)
		case "client-ip":
			m.clientIP, err = oneOf(v, clientPreserve, clientSNAT, clientProxyV2)
		default:
			return m, fmt.Errorf("publish %q: unknown key %q: want published, target, protocol, mode or client-ip", s, k)
		}
		if err != nil {
			return m, fmt.Errorf("publish %q: %s: %w", s, k, err)
		}
	}
	switch {
	case !seen["published"]:
		return m, fmt.Errorf("publish %q: no published=PORT", s)
	case !seen["target"]:
		return m, fmt.Errorf("publish %q: no target=PORT", s)
	case m.clientIP == clientProxyV2 && m.proto != "tcp":
		return m, fmt.Errorf("publish %q: client-ip=proxy-v2 is for protocol=tcp only", s)
	}
	return m, nil
}

// parseMeshShort parses P:T[/tcp|/udp] into m.
func parseMeshShort(s string, m meshPort) (meshPort, error) {
	spec, proto, hasProto := strings.Cut(s, "/")
	if hasProto {
		var err error
		if m.proto, err = oneOf(proto, "tcp", "udp"); err != nil {
			return m, fmt.Errorf("publish %q: protocol: %w", s, err)
		}
	}
	p, t, ok := strings.Cut(spec, ":")
	if !ok {
		return m, fmt.Errorf("publish %q: want published=PORT,target=PORT[,...] or PORT:TARGET[/udp]", s)
	}
	var err error
	if m.published, err = parsePortNumber(p); err != nil {
		return m, fmt.Errorf("publish %q: published: %w", s, err)
	}
	if m.target, err = parsePortNumber(t); err != nil {
		return m, fmt.Errorf("publish %q: target: %w", s, err)
	}
	return m, nil
}

// oneOf returns v if it is one of want.
func oneOf(v string, want ...string) (string, error) {
	if slices.Contains(want, v) {
		return v, nil
	}
	return "", fmt.Errorf("%q: want %s", v, strings.Join(want, " or "))
}

// parseMeshPorts parses a service's published ports and returns them
// with their canonical forms, sorted by protocol and port: no port and
// protocol twice, a target the service serves (one of its VIP ports when
// it lists some), and mode=ingress only with a VIP (endpoint mode vip).
func parseMeshPorts(in []string, ports []lb.Port, endpointMode string) ([]meshPort, []string, error) {
	if len(in) > maxMeshPorts {
		return nil, nil, fmt.Errorf("%d published ports, at most %d", len(in), maxMeshPorts)
	}
	var out []meshPort
	for _, s := range in {
		m, err := parseMeshPort(s)
		if err != nil {
			return nil, nil, err
		}
		for _, o := range out {
			if o.portKey() == m.portKey() {
				return nil, nil, fmt.Errorf("publish %q: port %s published twice", s, m.portKey())
			}
		}
		if len(ports) > 0 && !slices.ContainsFunc(ports, func(p lb.Port) bool { return p.Port == m.target && p.Proto == m.lbProto() }) {
			return nil, nil, fmt.Errorf("publish %q: target %d/%s is not one of the service's ports", s, m.target, m.proto)
		}
		if m.mode == meshIngress && endpointMode == modeDNSRR {
			return nil, nil, fmt.Errorf("publish %q: mode=ingress needs the service's VIP and endpoint mode dnsrr has none (use mode=host)", s)
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b meshPort) int {
		if a.proto != b.proto {
			return strings.Compare(a.proto, b.proto)
		}
		return int(a.published) - int(b.published)
	})
	canon := make([]string, len(out))
	for i, m := range out {
		canon[i] = m.String()
	}
	return out, canon, nil
}

// meshConflict reports whether two published ports of different services
// cannot both be served: the same port and protocol, one of them on every
// host (mode=ingress).
func meshConflict(a, b meshPort) bool {
	return a.portKey() == b.portKey() && (a.mode == meshIngress || b.mode == meshIngress)
}

// meshClaim is the claim resource (tblSvcClaims, group meshClaimGroup) of
// service's ingress port: PORT/PROTO@SERVICE; two claims conflict when
// their ports do (svcClaimsConflict).
const meshClaimGroup = "publish"

func meshClaim(service string, m meshPort) string { return m.portKey() + "@" + service }
