package main

import (
	"bytes"
	"flag"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/daemon"
)

func TestDaemonRefusesRxSocketsOutOfRange(t *testing.T) {
	for _, n := range []string{"0", "-1", "65"} {
		var out, errb bytes.Buffer
		code := runCLI(&cliEnv{stdout: &out, stderr: &errb}, []string{"daemon", "--rx-sockets", n})
		want := "--rx-sockets " + n + ": out of range 1-64"
		if code != 2 || !strings.Contains(errb.String(), want) {
			t.Errorf("daemon --rx-sockets %s: code %d, stderr %q; want 2 and %q", n, code, errb.String(), want)
		}
	}
}

// TestDaemonRefusesDurationsOutOfRange: duration flags out of their range
// exit 2 with the flag, the value and the range.
func TestDaemonRefusesDurationsOutOfRange(t *testing.T) {
	for _, tc := range []struct{ flag, value, want string }{
		{"--busy-poll", "-1µs", "out of range 0-1s"},
		{"--busy-poll", "2s", "out of range 0-1s"},
		{"--kernel-tunnel-recheck", "0s", "at least 100ms"},
		{"--kernel-tunnel-recheck", "-1s", "at least 100ms"},
	} {
		var out, errb bytes.Buffer
		code := runCLI(&cliEnv{stdout: &out, stderr: &errb}, []string{"daemon", tc.flag, tc.value})
		want := tc.flag + " " + tc.value + ": " + tc.want
		if code != 2 || !strings.Contains(errb.String(), want) {
			t.Errorf("daemon %s %s: code %d, stderr %q; want 2 and %q", tc.flag, tc.value, code, errb.String(), want)
		}
	}
}

// TestKernelTunnelFlag: --kernel-tunnel takes a mode and the boolean
// spellings it had as a bool flag; it defaults to auto.
func TestKernelTunnelFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want daemon.KernelTunnelMode
	}{
		{nil, daemon.KernelTunnelAuto},
		{[]string{"--kernel-tunnel"}, daemon.KernelTunnelOn},
		{[]string{"--kernel-tunnel=true"}, daemon.KernelTunnelOn},
		{[]string{"--kernel-tunnel=1"}, daemon.KernelTunnelOn},
		{[]string{"--kernel-tunnel=false"}, daemon.KernelTunnelOff},
		{[]string{"--kernel-tunnel=0"}, daemon.KernelTunnelOff},
		{[]string{"--kernel-tunnel=auto"}, daemon.KernelTunnelAuto},
		{[]string{"--kernel-tunnel=on"}, daemon.KernelTunnelOn},
		{[]string{"--kernel-tunnel=OFF"}, daemon.KernelTunnelOff},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		f := daemon.KernelTunnelAuto
		fs.Var(modeFlag[daemon.KernelTunnelMode]{&f, daemon.ParseKernelTunnelMode}, "kernel-tunnel", "")
		if err := fs.Parse(tc.args); err != nil || f != tc.want || fs.NArg() != 0 {
			t.Errorf("%q: %q, %v, %d arguments left; want %q", tc.args, f, err, fs.NArg(), tc.want)
		}
	}
}

// TestMeshNATFlag: the daemon's --mesh-nat takes a mode and the boolean
// spellings it had as a bool flag; it defaults to auto; a bad one is
// refused with a usage error.
func TestMeshNATFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want daemon.MeshNATMode
	}{
		{nil, daemon.MeshNATAuto},
		{[]string{"--mesh-nat"}, daemon.MeshNATOn},
		{[]string{"--mesh-nat=true"}, daemon.MeshNATOn},
		{[]string{"--mesh-nat=false"}, daemon.MeshNATOff},
		{[]string{"--mesh-nat=auto"}, daemon.MeshNATAuto},
		{[]string{"--mesh-nat=off"}, daemon.MeshNATOff},
		{[]string{"--mesh-nat=On"}, daemon.MeshNATOn},
	} {
		var f daemonFlags
		fs := &flagSet{FlagSet: flag.NewFlagSet("t", flag.ContinueOnError)}
		f.register(fs)
		if err := fs.Parse(tc.args); err != nil || f.meshNAT != tc.want || fs.NArg() != 0 {
			t.Errorf("%q: %q, %v, %d arguments left; want %q", tc.args, f.meshNAT, err, fs.NArg(), tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := runCLI(&cliEnv{stdout: &out, stderr: &errb}, []string{"daemon", "--mesh-nat=maybe"}); code != 2 ||
		!strings.Contains(errb.String(), `"maybe" for -mesh-nat: want auto, on or off`) {
		t.Errorf("daemon --mesh-nat=maybe: code %d, stderr %q; want 2 and the modes", code, errb.String())
	}
}

func TestDaemonRefusesBadKernelTunnel(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kernel-tunnel=maybe"}, `"maybe" for -kernel-tunnel: want auto, on or off`},
		{[]string{"--kernel-tunnel", "off"}, `unexpected argument "off": give the mode with '=': --kernel-tunnel=off, --mesh-nat=off`},
	} {
		var out, errb bytes.Buffer
		code := runCLI(&cliEnv{stdout: &out, stderr: &errb}, append([]string{"daemon"}, tc.args...))
		if code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("daemon %q: code %d, stderr %q; want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}
