package dataplane

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

// pollingDevice is a pipe end that records SetBusyPoll, like a TAP.
type pollingDevice struct {
	*netdevtest.Device
	span atomic.Int64
}

func (d *pollingDevice) SetBusyPoll(span time.Duration) { d.span.Store(int64(span)) }

// Options.BusyPoll reaches every port's device that can poll.
func TestBusyPollReachesPortDevices(t *testing.T) {
	mn := tunnel.NewMemNetwork()
	u, err := mn.Listen(netip.AddrPortFrom(local, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	const span = 30 * time.Microsecond
	dp := New(Options{Tunnel: tunnel.Config{Underlay: u, LocalAddr: local}, BusyPoll: span})
	t.Cleanup(func() { dp.Close() })
	a, _ := pipe(t, "bp0")
	dev := &pollingDevice{Device: a}
	cfg := Config{Networks: []NetworkConfig{testNetwork("a", 4096, 1)}}
	cfg.Networks[0].Ports = []PortConfig{{Name: "c1/eth0", Device: dev, MAC: mac(2), IP: ip(2)}}
	if err := dp.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	if got := time.Duration(dev.span.Load()); got != span {
		t.Fatalf("the port's device polls for %v, want Options.BusyPoll %v", got, span)
	}
}
