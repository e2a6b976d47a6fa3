package daemon

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/dataplane"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

func TestParseKernelTunnelMode(t *testing.T) {
	for in, want := range map[string]KernelTunnelMode{
		"auto": KernelTunnelAuto, "on": KernelTunnelOn, "off": KernelTunnelOff, "Auto": KernelTunnelAuto,
		"true": KernelTunnelOn, "1": KernelTunnelOn, "t": KernelTunnelOn, "false": KernelTunnelOff, "0": KernelTunnelOff,
	} {
		if got, err := ParseKernelTunnelMode(in); got != want || err != nil {
			t.Errorf("ParseKernelTunnelMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "yes", "enabled", "auto,on"} {
		if got, err := ParseKernelTunnelMode(in); err == nil || !strings.Contains(err.Error(), "want auto, on or off") {
			t.Errorf("ParseKernelTunnelMode(%q) = %q, %v; want an error", in, got, err)
		}
	}
}

// nopSuper is a SuperWriter that takes everything.
type nopSuper struct{}

func (nopSuper) WriteSuper([]byte, packet.Offload, uint32, netip.AddrPort, uint32) error {
	return nil
}
func (nopSuper) Close() error { return nil }

// TestRecheckKernelTunnelSwitchesAndLogsOnce: as the checked condition
// changes (a forward firewall appears, its reason changes, it goes), the
// VTEP's kernel path follows, `stats` shows the state and reason, and each
// switch is logged once.
func TestRecheckKernelTunnelSwitchesAndLogsOnce(t *testing.T) {
	mn := tunnel.NewMemNetwork()
	u, err := mn.Listen(netip.MustParseAddrPort("192.0.2.1:4789"))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	d := &Daemon{
		log: slog.New(slog.NewTextHandler(&logs, nil)),
		dp:  dataplane.New(dataplane.Options{Tunnel: tunnel.Config{Underlay: u, Super: nopSuper{}}}),
	}
	defer d.dp.Close()
	d.ktnl.Store(&ktnlState{mode: KernelTunnelAuto, open: true, active: true, reason: "clear"})
	verdict := struct {
		ok     bool
		reason string
	}{true, "clear"}
	d.ktnlCheck = func(m KernelTunnelMode) (bool, string) {
		if m != KernelTunnelAuto {
			t.Errorf("checked for mode %q", m)
		}
		return verdict.ok, verdict.reason
	}
	step := func(ok bool, reason string, wantLogs int) {
		t.Helper()
		verdict.ok, verdict.reason = ok, reason
		d.recheckKernelTunnel()
		if d.dp.KernelTunnel() != ok {
			t.Errorf("after a check saying %v (%s): the VTEP's kernel path is on: %v", ok, reason, d.dp.KernelTunnel())
		}
		k := d.kernelTunnelStats(d.dp.TunnelStats())
		if k == nil || k.Mode != "auto" || k.Active != ok || k.Reason != reason {
			t.Errorf("stats show %+v; want auto, active %v, %q", k, ok, reason)
		}
		if n := strings.Count(logs.String(), "kernel tunnel segmentation"); n != wantLogs {
			t.Errorf("%d log lines about the kernel tunnel, want %d:\n%s", n, wantLogs, logs.String())
		}
	}
	step(true, "clear", 0)
	step(false, `nftables chain "inet f fw"`, 1)
	step(false, `nftables chain "inet f fw"`, 1)
	step(false, "legacy iptables tables loaded (filter)", 1) // a new reason, still off: no warning again
	step(true, "clear", 2)
	if !strings.Contains(logs.String(), `level=WARN msg="kernel tunnel segmentation off: segmenting in userspace" mode=auto reason="nftables chain \"inet f fw\""`) ||
		!strings.Contains(logs.String(), `level=INFO msg="kernel tunnel segmentation back on" mode=auto reason=clear`) {
		t.Errorf("logs:\n%s", logs.String())
	}
}
