package dockerplugin

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// createEndpoint checks the address Docker's IPAM gave (or holds one when
// it gave none) and answers the MAC vxmesh derives from it.
func (p *Plugin) createEndpoint(req createEndpointRequest) (any, error) {
	if _, _, err := names(req.EndpointID); err != nil {
		return nil, err
	}
	network, err := p.resolve(req.NetworkID)
	if err != nil {
		return nil, err
	}
	in := req.Interface
	if in == nil {
		in = &endpointInterface{}
	}
	if in.AddressIPv6 != "" {
		return nil, errors.New("IPv6 is not supported on vxmesh networks")
	}
	var subnet netip.Prefix
	for _, n := range p.clusterNets() {
		if n.name == network {
			subnet = n.subnet
		}
	}
	out := &endpointInterface{}
	var ip netip.Addr
	held := in.Address == ""
	if held {
		if ip, err = p.cfg.Backend.ReserveAddress(network, netip.Addr{}); err != nil {
			return nil, err
		}
		out.Address = netip.PrefixFrom(ip, subnet.Bits()).String()
	} else if ip, err = parseAddr(in.Address); err != nil || !subnet.Contains(ip) {
		return nil, fmt.Errorf("address %q: not an address of network %q (%s); use --ipam-driver with this driver", in.Address, network, subnet)
	}
	mac := p.cfg.Backend.EndpointMAC(ip).String()
	switch in.MacAddress {
	case "":
		out.MacAddress = mac
	case mac:
	default:
		if held {
			p.cfg.Backend.ReleaseAddress(network, ip)
		}
		return nil, fmt.Errorf("MAC %s: vxmesh derives an endpoint's MAC from its address (%s); leave --mac-address out", in.MacAddress, mac)
	}
	p.mu.Lock()
	p.eps[req.EndpointID] = endpointInfo{network: network, ip: ip, held: held}
	err = p.saveLocked()
	if err != nil {
		delete(p.eps, req.EndpointID)
	}
	p.mu.Unlock()
	if err != nil {
		if held {
			p.cfg.Backend.ReleaseAddress(network, ip)
		}
		return nil, err
	}
	return createEndpointResponse{Interface: out}, nil
}

// join makes the endpoint's TAP device in the daemon's namespace and
// tells Docker to move it into the sandbox as ethN; the gateway is the
// network's (vxmesh's gateway on this host: egress and DNS).
func (p *Plugin) join(req joinRequest) (any, error) {
	ctr, ifname, err := names(req.EndpointID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	ep, ok := p.eps[req.EndpointID]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("endpoint %.12s: not created through this plugin (no record of it in the vxmesh daemon); restart the container", req.EndpointID)
	}
	if req.SandboxKey == "" {
		return nil, fmt.Errorf("endpoint %.12s: no sandbox key", req.EndpointID)
	}
	e, err := p.cfg.Backend.AttachHostTAP(api.AttachRequest{
		Network: ep.network, Name: ctr, Netns: req.SandboxKey, IP: ep.ip.String(), IfName: ifname,
	})
	if err != nil {
		return nil, err
	}
	resp := joinResponse{InterfaceName: interfaceName{SrcName: e.IfName, DstPrefix: "eth"}}
	for _, n := range p.clusterNets() {
		if n.name == ep.network {
			resp.Gateway = n.gw.String()
		}
	}
	p.log.Info("docker endpoint joined", "container", ctr, "network", ep.network, "ip", ep.ip, "sandbox", req.SandboxKey)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.nameLater(ctr, ep.network, req.EndpointID)
	}()
	return resp, nil
}

// nameLater gives the endpoint the Docker container's name and its
// network aliases as DNS aliases, so that containers on other hosts
// resolve them, once the Engine lists the container with the endpoint
// (after Join: Docker starts the container then).
func (p *Plugin) nameLater(ctr, network, id string) {
	deadline := time.Now().Add(nameTimeout)
	for {
		name, ok, err := p.cfg.Engine.ContainerName(p.ctx, id)
		if ok {
			if err := p.cfg.Backend.AddAlias(ctr, network, name); err != nil {
				p.log.Warn("docker endpoint: container name not added as an alias", "container", ctr, "name", name, "err", err)
			}
			p.addNetworkAliases(ctr, network, name, id)
			return
		}
		if _, attached := p.attached(ctr); !attached || time.Now().After(deadline) {
			if err != nil {
				p.log.Warn("docker endpoint: container name not learnt", "container", ctr, "err", err)
			}
			return
		}
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// addNetworkAliases gives the endpoint the aliases Docker's container
// name has on it (Docker adds the short container ID to those it was
// given); one vxmesh cannot take is logged and skipped.
func (p *Plugin) addNetworkAliases(ctr, network, name, id string) {
	aliases, err := p.cfg.Engine.EndpointAliases(p.ctx, name, id)
	if err != nil {
		p.log.Warn("docker endpoint: network aliases not learnt", "container", ctr, "err", err)
		return
	}
	for _, a := range aliases {
		if a == name {
			continue
		}
		if err := p.cfg.Backend.AddAlias(ctr, network, a); err != nil {
			p.log.Warn("docker endpoint: network alias not added", "container", ctr, "alias", a, "err", err)
		}
	}
}

// attached returns the cluster network container ctr is attached to.
func (p *Plugin) attached(ctr string) (string, bool) {
	for _, e := range p.cfg.Backend.Endpoints() {
		if e.Name == ctr {
			return e.Network, true
		}
	}
	return "", false
}

// leave detaches the endpoint: Docker has moved the device back to the
// daemon's namespace, and closing it destroys it.
func (p *Plugin) leave(req endpointRequest) (any, error) {
	ctr, _, err := names(req.EndpointID)
	if err != nil {
		return nil, err
	}
	if network, ok := p.attached(ctr); ok {
		if err := p.cfg.Backend.Detach(ctr, network); err != nil {
			return nil, err
		}
		p.log.Info("docker endpoint left", "container", ctr, "network", network)
	}
	return struct{}{}, nil
}

// deleteEndpoint forgets the endpoint (detaching it if Leave did not).
// Its address is Docker's to release (IpamDriver.ReleaseAddress).
func (p *Plugin) deleteEndpoint(req endpointRequest) (any, error) {
	if _, err := p.leave(req); err != nil {
		return nil, err
	}
	p.mu.Lock()
	ep, ok := p.eps[req.EndpointID]
	delete(p.eps, req.EndpointID)
	if err := p.saveLocked(); err != nil {
		// The record comes back at the next start, for a DeleteEndpoint
		// that is not coming: say so, but the endpoint is gone.
		p.log.Warn("docker endpoint: its record stays in the state file", "endpoint", req.EndpointID, "err", err)
	}
	p.mu.Unlock()
	if ok && ep.held {
		// The hold CreateEndpoint made (none is left once Join attached).
		p.cfg.Backend.ReleaseAddress(ep.network, ep.ip)
	}
	return struct{}{}, nil
}

func (p *Plugin) operInfo(req endpointRequest) (any, error) {
	ctr, ifname, err := names(req.EndpointID)
	if err != nil {
		return nil, err
	}
	v := map[string]string{"vxmesh.container": ctr, "vxmesh.ifname": ifname}
	for _, e := range p.cfg.Backend.Endpoints() {
		if e.Name == ctr {
			v["vxmesh.network"], v["vxmesh.ip"], v["vxmesh.state"] = e.Network, e.IP, e.State
		}
	}
	return operInfoResponse{Value: v}, nil
}
