package dockerplugin

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// portBinding is one entry of Docker's port map option (libnetwork's
// types.PortBinding as JSON): `docker run -p [HOSTIP:]HOSTPORT:PORT`.
type portBinding struct {
	Proto       int
	IP          string
	Port        int
	HostIP      string
	HostPort    int
	HostPortEnd int
}

// IANA protocol numbers Docker uses in a port binding.
const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

// parsePortMap turns the port map option's value (JSON decoded) into
// vxmesh publish specs (`[HOSTIP:]HOSTPORT:PORT/PROTO`, as `vxmesh run
// -p`). A binding vxmesh cannot honour is refused, naming it: no host port
// (`-p 80`, `-P`: Docker would pick one, but a network plugin cannot tell
// Docker which port it picked, so `docker port` would lie), a host port
// range, SCTP, an IPv6 host address other than "::" (Docker adds "::" next
// to 0.0.0.0; vxmesh listens on IPv4 only).
func parsePortMap(v any) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("option %s: %v", portMapOption, err)
	}
	var pm []portBinding
	if err := json.Unmarshal(raw, &pm); err != nil {
		return nil, fmt.Errorf("option %s: want a list of port bindings: %v", portMapOption, err)
	}
	var out []string
	for _, b := range pm {
		spec, err := b.spec()
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, spec) {
			out = append(out, spec)
		}
	}
	return out, nil
}

// spec returns b as a publish spec.
func (b portBinding) spec() (string, error) {
	var proto string
	switch b.Proto {
	case protoTCP:
		proto = "tcp"
	case protoUDP:
		proto = "udp"
	case protoSCTP:
		return "", fmt.Errorf("published port %d/sctp: SCTP is not supported on vxmesh networks", b.Port)
	default:
		return "", fmt.Errorf("published port %d: protocol %d: want tcp or udp", b.Port, b.Proto)
	}
	name := strconv.Itoa(b.Port) + "/" + proto
	if b.Port < 1 || b.Port > 65535 {
		return "", fmt.Errorf("published port %s: container port out of range 1-65535", name)
	}
	if b.HostPort == 0 {
		return "", fmt.Errorf("published port %s: no host port (docker run -p %d or -P): a network plugin cannot tell Docker which port it picked; give one, e.g. -p 8080:%d", name, b.Port, b.Port)
	}
	if b.HostPort < 0 || b.HostPort > 65535 {
		return "", fmt.Errorf("published port %s: host port %d out of range 1-65535", name, b.HostPort)
	}
	if b.HostPortEnd != 0 && b.HostPortEnd != b.HostPort {
		return "", fmt.Errorf("published port %s: host port range %d-%d: give one host port", name, b.HostPort, b.HostPortEnd)
	}
	spec := strconv.Itoa(b.HostPort) + ":" + strconv.Itoa(b.Port) + "/" + proto
	if b.HostIP == "" {
		return spec, nil
	}
	ip, err := netip.ParseAddr(b.HostIP)
	switch {
	case err != nil:
		return "", fmt.Errorf("published port %s: host address %q: %v", name, b.HostIP, err)
	case ip.Is4() && !ip.IsUnspecified():
		return ip.String() + ":" + spec, nil
	case ip.IsUnspecified():
		return spec, nil
	}
	return "", fmt.Errorf("published port %s: host address %s: vxmesh publishes on IPv4 addresses only", name, ip)
}

// programExternal publishes the endpoint's ports (`docker run -p`) on
// this host, as `vxmesh run -p` does: Docker calls it after Join, on the
// container's gateway endpoint only (whose network carries the replies).
// Egress needs nothing: the gateway does it.
func (p *Plugin) programExternal(req endpointRequest) (any, error) {
	specs, err := parsePortMap(req.Options[portMapOption])
	if err != nil {
		return nil, err
	}
	ctr, _, err := names(req.EndpointID)
	if err != nil {
		return nil, err
	}
	network, ok := p.attached(ctr)
	if !ok {
		if len(specs) == 0 {
			return struct{}{}, nil
		}
		return nil, fmt.Errorf("endpoint %.12s: not joined; cannot publish ports", req.EndpointID)
	}
	if err := p.cfg.Backend.PublishPorts(ctr, network, specs); err != nil {
		return nil, err
	}
	if len(specs) > 0 {
		p.log.Info("docker endpoint's ports published", "container", ctr, "network", network, "ports", specs)
	}
	return struct{}{}, nil
}

// revokeExternal closes the endpoint's published ports (the container
// stops, or another network becomes its gateway); an endpoint that is
// gone has none.
func (p *Plugin) revokeExternal(req endpointRequest) (any, error) {
	ctr, _, err := names(req.EndpointID)
	if err != nil {
		return nil, err
	}
	network, ok := p.attached(ctr)
	if !ok {
		return struct{}{}, nil
	}
	if err := p.cfg.Backend.UnpublishPorts(ctr, network); err != nil {
		return nil, fmt.Errorf("endpoint %.12s: closing its published ports: %w", req.EndpointID, err)
	}
	return struct{}{}, nil
}
