// Package cniplugin is the vxmesh CNI plugin (cmd/vxmesh-cni): it parses
// the network configuration a CNI runtime hands it, asks the local vxmesh
// daemon to attach or detach the container's namespace, and builds the CNI
// result from the daemon's answer.
package cniplugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/vxmesh/vxmesh/api"
)

// Config is a vxmesh-cni network configuration (one plugin of a conflist).
type Config struct {
	types.PluginConf
	// Network is the vxmesh network to attach to. It is required: the
	// CNI "name" names the runtime's network configuration, not
	// necessarily a vxmesh network.
	Network string `json:"network"`
	// Socket is the daemon's API socket (api.DefaultSocket when empty).
	Socket string `json:"socket,omitempty"`
	// RuntimeConfig holds the capabilities the runtime fills in.
	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`
	// Args are the conventional per-container arguments ("args" key).
	Args *Args `json:"args,omitempty"`
}

// RuntimeConfig holds the capability arguments vxmesh-cni understands:
// "ips" (a fixed address) and "aliases" (DNS names, keyed by the CNI
// network name, as Podman passes them).
type RuntimeConfig struct {
	IPs     []string            `json:"ips,omitempty"`
	Aliases map[string][]string `json:"aliases,omitempty"`
}

// Args is the "args" key of the conventions document; only args.cni.ips
// is used.
type Args struct {
	CNI struct {
		IPs []string `json:"ips,omitempty"`
	} `json:"cni"`
}

// knownKeys are the top-level keys a configuration may have; any other
// one (a misspelt "network", say) is an error. Keys under the reserved
// "cni.dev/" prefix are the runtime's and always accepted.
var knownKeys = map[string]bool{
	"cniVersion": true, "name": true, "type": true, "capabilities": true, "ipam": true, "dns": true,
	"prevResult": true, "runtimeConfig": true, "args": true, "network": true, "socket": true,
}

// ConfigError is a network configuration vxmesh-cni refuses (CNI error
// code 7).
type ConfigError struct{ msg string }

// Error implements error.
func (e *ConfigError) Error() string { return e.msg }

func configErr(name, format string, args ...any) error {
	return &ConfigError{fmt.Sprintf("vxmesh-cni: network config %q: ", name) + fmt.Sprintf(format, args...)}
}

// ParseConfig decodes and validates a network configuration (the plugin's
// stdin). Every error names the configuration and the cause.
func ParseConfig(data []byte) (*Config, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, &ConfigError{fmt.Sprintf("vxmesh-cni: network config: not a JSON object: %v", err)}
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&c); err != nil {
		return nil, &ConfigError{fmt.Sprintf("vxmesh-cni: network config: %v", err)}
	}
	for k := range keys {
		if !knownKeys[k] && !strings.HasPrefix(k, "cni.dev/") {
			return nil, configErr(c.Name, "unknown key %q (vxmesh-cni knows %q and %q besides the standard ones)", k, "network", "socket")
		}
	}
	if c.Network == "" {
		return nil, configErr(c.Name, `missing "network": name the vxmesh network to attach to (e.g. "network": %q)`, c.Name)
	}
	if c.IPAM.Type != "" {
		return nil, configErr(c.Name, `"ipam" %q: vxmesh-cni gets addresses from the vxmesh daemon; remove the "ipam" key`, c.IPAM.Type)
	}
	if len(c.DNS.Nameservers) > 0 {
		return nil, configErr(c.Name, `"dns.nameservers": the daemon answers DNS at 127.0.0.11 and forwards to its own upstreams; remove them`)
	}
	if c.Socket != "" && !strings.HasPrefix(c.Socket, "/") {
		return nil, configErr(c.Name, `"socket" %q: not an absolute path`, c.Socket)
	}
	return &c, nil
}

// SocketPath is the daemon socket the configuration names.
func (c *Config) SocketPath() string {
	if c.Socket == "" {
		return api.DefaultSocket
	}
	return c.Socket
}

// FixedIP returns the address asked for by runtimeConfig.ips, args.cni.ips
// or CNI_ARGS IP= (cniArgs), or an invalid Addr when none is. Asking for
// more than one address, or for different ones in different places, is an
// error: a vxmesh endpoint has one IPv4 address.
func (c *Config) FixedIP(cniArgs string) (netip.Addr, int, error) {
	var wants []string
	wants = append(wants, c.RuntimeConfig.IPs...)
	if c.Args != nil {
		wants = append(wants, c.Args.CNI.IPs...)
	}
	for _, kv := range strings.Split(cniArgs, ";") {
		if v, ok := strings.CutPrefix(kv, "IP="); ok {
			wants = append(wants, v)
		}
	}
	var addr netip.Addr
	bits := -1
	for _, w := range wants {
		a, b, err := parseIP(w)
		if err != nil {
			return netip.Addr{}, 0, configErr(c.Name, "ip %q: %v", w, err)
		}
		if addr.IsValid() && a != addr {
			return netip.Addr{}, 0, configErr(c.Name, "ips %q: a vxmesh endpoint has exactly one address", wants)
		}
		if b >= 0 {
			bits = b
		}
		addr = a
	}
	return addr, bits, nil
}

// parseIP accepts an IPv4 address with or without a prefix length; bits is
// -1 without one.
func parseIP(s string) (netip.Addr, int, error) {
	var a netip.Addr
	bits := -1
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return a, 0, errors.New("not an address or an address/prefix-length")
		}
		a, bits = p.Addr(), p.Bits()
	} else {
		var err error
		if a, err = netip.ParseAddr(s); err != nil {
			return a, 0, errors.New("not an address or an address/prefix-length")
		}
	}
	if !a.Is4() {
		return a, 0, errors.New("vxmesh networks are IPv4")
	}
	return a, bits, nil
}

// Aliases are the DNS names the runtime asks for on this network.
func (c *Config) Aliases() []string {
	return c.RuntimeConfig.Aliases[c.Name]
}
