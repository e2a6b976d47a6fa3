package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// stateFile is the name of the persisted state inside --state-dir.
const stateFile = "state.json"

// savedState is what survives a daemon restart: the control-plane
// decisions, never data-plane counters.
type savedState struct {
	Version    int              `json:"version"`
	Networks   []savedNetwork   `json:"networks"`
	Containers []savedContainer `json:"containers"`
}

// savedNetwork is a network in state.json. It is the on-disk schema:
// fields are only ever added (with omitempty), so that a file written by
// an older version still loads. netRecord is the gossip schema; the two
// are converted with netRecord.saved and savedNetwork.record.
type savedNetwork struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Subnet  string    `json:"subnet"`
	Gateway string    `json:"gateway"`
	MTU     int       `json:"mtu"`
	VNI     uint32    `json:"vni"`
	Created time.Time `json:"created"`
	// VTEPs are external RFC 7348 VTEPs of the network.
	VTEPs []string `json:"vteps,omitempty"`
	// Encrypted networks are carried in ESP between hosts with Cipher
	// (aes128-gcm or aes256-gcm). Keys are never stored here.
	Encrypted bool   `json:"encrypted,omitempty"`
	Cipher    string `json:"cipher,omitempty"`
	// StormLimit is how many flooded frames per second each container
	// port may send (see vswitch.Config.StormLimit): -1 unlimited, 0 (a
	// record written before the field existed) the default.
	StormLimit int `json:"storm_limit,omitempty"`
	// Internal networks have no egress.
	Internal bool `json:"internal,omitempty"`
	// GatewayHost is this host's gateway address on the network (the
	// routing mesh), while it has a service with published ports.
	GatewayHost string `json:"gateway_host,omitempty"`
}

// record is the network as the cluster's record.
func (s savedNetwork) record() netRecord {
	return netRecord{
		Name: s.Name, ID: s.ID, Subnet: s.Subnet, Gateway: s.Gateway, MTU: s.MTU, VNI: s.VNI,
		Created: s.Created, VTEPs: s.VTEPs, Encrypted: s.Encrypted, Cipher: s.Cipher, StormLimit: s.StormLimit,
		Internal: s.Internal,
	}
}

type savedContainer struct {
	Name    string `json:"name"`
	Netns   string `json:"netns"`
	NsDev   uint64 `json:"ns_dev"`
	NsIno   uint64 `json:"ns_ino"`
	Managed bool   `json:"managed"`
	// Endpoints are the container's interfaces, one per network.
	Endpoints []savedEndpoint `json:"endpoints"`
}

type savedEndpoint struct {
	Network string   `json:"network"`
	IP      string   `json:"ip"`
	MAC     string   `json:"mac"`
	IfName  string   `json:"ifname"`
	Aliases []string `json:"aliases,omitempty"`
	// Services are the services the endpoint joined as a backend.
	Services []savedSvcMember `json:"services,omitempty"`
	// Published are the endpoint's published ports (gateway.Publish
	// strings).
	Published []string `json:"published,omitempty"`
}

// loadState reads dir/state.json; a missing file is an empty state.
func loadState(dir string) (*savedState, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if os.IsNotExist(err) {
		return &savedState{Version: 1}, nil
	}
	if err != nil {
		return nil, err
	}
	var s savedState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("state %s: %w", filepath.Join(dir, stateFile), err)
	}
	return &s, nil
}

// writeState replaces dir/state.json atomically (write, fsync, rename), so
// a crash leaves either the old or the new state, never a torn file.
func writeState(dir string, s *savedState) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".state-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, stateFile))
}
