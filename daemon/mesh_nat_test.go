package daemon

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/gateway"
)

func TestParseMeshNATMode(t *testing.T) {
	for in, want := range map[string]MeshNATMode{
		"auto": MeshNATAuto, "on": MeshNATOn, "off": MeshNATOff, "OFF": MeshNATOff,
		"true": MeshNATOn, "1": MeshNATOn, "false": MeshNATOff, "0": MeshNATOff,
	} {
		if got, err := ParseMeshNATMode(in); got != want || err != nil {
			t.Errorf("ParseMeshNATMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "yes", "auto,on"} {
		if got, err := ParseMeshNATMode(in); err == nil || !strings.Contains(err.Error(), "want auto, on or off") {
			t.Errorf("ParseMeshNATMode(%q) = %q, %v; want an error", in, got, err)
		}
	}
}

// fakeUplinks records the ports each Sync steered.
type fakeUplinks struct{ syncs [][]uint16 }

func (f *fakeUplinks) Sync(ports []uint16) error {
	f.syncs = append(f.syncs, slices.Clone(ports))
	return nil
}

func (f *fakeUplinks) Write(int, [][]byte, int) (int, error) { return 0, nil }

// TestRecheckMeshNATSwitchesAndLogsOnce: in auto mode, as the checked
// condition changes (an input firewall appears, its reason changes, it
// goes), the steering's filters follow (the uplinks are synced to no port
// while a firewall could filter, to the NAT's ports again after), `stats`
// shows the mode, state and reason, and each switch is logged once.
func TestRecheckMeshNATSwitchesAndLogsOnce(t *testing.T) {
	var logs bytes.Buffer
	d := &Daemon{log: slog.New(slog.NewTextHandler(&logs, nil)), egress: gateway.NewEgress(gateway.EgressConfig{})}
	n := gateway.NewNAT(gateway.NATConfig{})
	up := &fakeUplinks{}
	d.meshGate = &gatedUplinks{u: up}
	d.meshGate.on.Store(true)
	if err := n.SetUplinks(d.meshGate); err != nil {
		t.Fatal(err)
	}
	d.egress.SetNAT(n)
	d.meshNAT.Store(&meshNATState{mode: MeshNATAuto, open: true, active: true, reason: "clear"})
	verdict := struct {
		ok     bool
		reason string
	}{true, "clear"}
	d.meshNATCheck = func(m MeshNATMode) (bool, string) {
		if m != MeshNATAuto {
			t.Errorf("checked for mode %q", m)
		}
		return verdict.ok, verdict.reason
	}
	step := func(ok bool, reason string, wantSyncs, wantLogs int) {
		t.Helper()
		verdict.ok, verdict.reason = ok, reason
		d.recheckMeshNAT()
		if len(up.syncs) != wantSyncs {
			t.Errorf("after a check saying %v (%s): %d syncs of the steering, want %d", ok, reason, len(up.syncs), wantSyncs)
		}
		// What a sync of the published port 8080 steers now.
		before := len(up.syncs)
		_ = d.meshGate.Sync([]uint16{8080})
		if got := up.syncs[before]; (len(got) == 1) != ok {
			t.Errorf("after a check saying %v (%s): the steering gets ports %v", ok, reason, got)
		}
		up.syncs = up.syncs[:before]
		s := d.egressStats().NAT
		if s == nil || s.Mode != "auto" || s.Active != ok || s.Reason != reason {
			t.Errorf("stats show %+v; want auto, active %v, %q", s, ok, reason)
		}
		if c := strings.Count(logs.String(), "published-port NAT steering"); c != wantLogs {
			t.Errorf("%d log lines about the steering, want %d:\n%s", c, wantLogs, logs.String())
		}
	}
	step(true, "clear", 1, 0)                                                 // nothing changed: no sync
	step(false, `nftables chain "inet filter input" on the input hook`, 2, 1) // filters removed
	step(false, "legacy iptables tables loaded (filter)", 2, 1)               // still off: no sync, a debug line
	step(true, "clear", 3, 2)                                                 // back on
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("%d warnings, want 1 (the switch off):\n%s", n, logs.String())
	}
}

// TestMeshNATModes: --mesh-nat=off sets up no NAT and `stats`
// shows none; on steers whatever the firewall says.
func TestMeshNATModes(t *testing.T) {
	d := &Daemon{log: slog.New(slog.DiscardHandler), egress: gateway.NewEgress(gateway.EgressConfig{}), cfg: Config{MeshNAT: MeshNATOff}}
	d.startMeshNAT(nil)
	if d.egress.NAT() != nil || d.egressStats().NAT != nil {
		t.Errorf("--mesh-nat=off: NAT %v, stats %+v; want none", d.egress.NAT(), d.egressStats().NAT)
	}
	if ok, reason := d.meshNATAllowed(MeshNATOn); !ok || !strings.Contains(reason, "--mesh-nat=on") {
		t.Errorf("meshNATAllowed(on) = %v, %q; want steering", ok, reason)
	}
}
