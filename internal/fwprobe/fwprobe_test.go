package fwprobe

import (
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"
)

// nlMsg builds one netlink message of type typ, sequence seq and flags.
func nlMsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	l := nlmsgHdrLen + len(payload)
	b := make([]byte, align4(l))
	binary.NativeEndian.PutUint32(b[0:4], uint32(l))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	copy(b[nlmsgHdrLen:], payload)
	return b
}

// nlAttr builds one netlink attribute, padded.
func nlAttr(typ uint16, v []byte) []byte {
	b := make([]byte, align4(nlaHdrLen+len(v)))
	binary.NativeEndian.PutUint16(b[0:2], uint16(nlaHdrLen+len(v)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[nlaHdrLen:], v)
	return b
}

func cstr(s string) []byte { return append([]byte(s), 0) }

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// chainMsg is a NEWCHAIN message as the kernel dumps it; hook < 0 makes a
// regular chain.
func chainMsg(seq uint32, family uint8, table, name, typ string, hook int) []byte {
	p := []byte{family, 0, 0, 0}
	p = append(p, nlAttr(attrChainTable, cstr(table))...)
	p = append(p, nlAttr(attrChainHandle, binary.BigEndian.AppendUint64(nil, 7))...)
	p = append(p, nlAttr(attrChainName, cstr(name))...)
	if hook >= 0 {
		h := append(nlAttr(attrHookNum, be32(uint32(hook))), nlAttr(attrHookPrio, be32(uint32(0xffffff9c)))...) // -100
		p = append(p, nlAttr(attrChainHook|0x8000, h)...)                                                       // NLA_F_NESTED
		p = append(p, nlAttr(attrChainType, cstr(typ))...)
	}
	return nlMsg(subsysNFTables<<8|msgNewChain, 0x2, seq, p) // NLM_F_MULTI
}

func doneMsg(seq uint32) []byte { return nlMsg(nlmsgDone, 0x2, seq, make([]byte, 4)) }

const attrChainHandle = 2 // NFTA_CHAIN_HANDLE: ignored by the parser

func TestParseChainsReadsBaseAndRegularChains(t *testing.T) {
	var b []byte
	b = append(b, chainMsg(5, FamilyInet, "f", "fw", "filter", HookForward)...)
	b = append(b, chainMsg(5, FamilyInet, "f", "mine", "", -1)...)
	b = append(b, chainMsg(5, FamilyIPv4, "nat", "POSTROUTING", "nat", HookPostrouting)...)
	chains, done, err := ParseChains(nil, b, 5)
	if err != nil || done {
		t.Fatalf("ParseChains = %v, done %v", err, done)
	}
	want := []Chain{
		{Family: FamilyInet, Table: "f", Name: "fw", Type: "filter", Base: true, Hook: HookForward, Priority: -100},
		{Family: FamilyInet, Table: "f", Name: "mine"},
		{Family: FamilyIPv4, Table: "nat", Name: "POSTROUTING", Type: "nat", Base: true, Hook: HookPostrouting, Priority: -100},
	}
	if len(chains) != len(want) {
		t.Fatalf("got %+v, want %+v", chains, want)
	}
	for i := range want {
		if chains[i] != want[i] {
			t.Errorf("chain %d = %#v, want %#v", i, chains[i], want[i])
		}
	}
	chains, done, err = ParseChains(chains, doneMsg(5), 5)
	if err != nil || !done || len(chains) != 3 {
		t.Errorf("after NLMSG_DONE: %d chains, done %v, err %v", len(chains), done, err)
	}
}

func TestParseChainsErrors(t *testing.T) {
	errMsg := func(code int32) []byte {
		return nlMsg(nlmsgError, 0, 5, binary.NativeEndian.AppendUint32(make([]byte, 0, 20), uint32(code)))
	}
	good := chainMsg(5, FamilyInet, "f", "fw", "filter", HookForward)
	noHookNum := nlMsg(subsysNFTables<<8|msgNewChain, 0x2, 5, append([]byte{FamilyInet, 0, 0, 0},
		nlAttr(attrChainHook, nlAttr(attrHookPrio, be32(0)))...))
	shortHook := nlMsg(subsysNFTables<<8|msgNewChain, 0x2, 5, append([]byte{FamilyInet, 0, 0, 0},
		nlAttr(attrChainHook, nlAttr(attrHookNum, []byte{0, 2}))...))
	badAttr := append([]byte(nil), good...)
	binary.NativeEndian.PutUint16(badAttr[nlmsgHdrLen+nfgenLen:], 200) // first attribute longer than the message
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"kernel error", errMsg(-int32(syscall.EPERM)), "operation not permitted"},
		{"truncated header", good[:10], "header truncated"},
		{"length beyond the read", good[:len(good)-8], "out of range"},
		{"other sequence", chainMsg(6, FamilyInet, "f", "fw", "filter", HookForward), "sequence 6"},
		{"interrupted", nlMsg(subsysNFTables<<8|msgNewChain, 0x2|nlmFDumpIntr, 5, []byte{1, 0, 0, 0}), "interrupted"},
		{"other message type", nlMsg(subsysNFTables<<8|1, 0x2, 5, []byte{1, 0, 0, 0}), "unexpected netlink message type"},
		{"no nfgenmsg", nlMsg(subsysNFTables<<8|msgNewChain, 0x2, 5, []byte{1}), "truncated"},
		{"hook without number", noHookNum, "without a hook number"},
		{"hook number of 2 bytes", shortHook, "hook number of 2 bytes"},
		{"attribute too long", badAttr, "attribute length 200"},
	} {
		_, done, err := ParseChains(nil, tc.b, 5)
		if err == nil || done || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: done %v, err %v; want an error with %q", tc.name, done, err, tc.want)
		}
	}
	if _, _, err := ParseChains(nil, errMsg(-int32(syscall.EPERM)), 5); !errors.Is(err, syscall.EPERM) {
		t.Errorf("a kernel error is not its errno: %v", err)
	}
	if _, done, err := ParseChains(nil, errMsg(0), 5); err != nil || done {
		t.Errorf("an acknowledgement: done %v, err %v", done, err)
	}
}

// TestDecide runs the rule on fake rulesets.
func TestDecide(t *testing.T) {
	fw := Chain{Family: FamilyInet, Table: "f", Name: "fw", Type: "filter", Base: true, Hook: HookForward}
	ipFwd := Chain{Family: FamilyIPv4, Table: "filter", Name: "FORWARD", Type: "filter", Base: true, Hook: HookForward}
	pre := Chain{Family: FamilyIPv4, Table: "raw", Name: "PREROUTING", Type: "filter", Base: true, Hook: HookPrerouting}
	post := Chain{Family: FamilyInet, Table: "nat", Name: "post", Type: "nat", Base: true, Hook: HookPostrouting}
	harmless := []Chain{
		{Family: FamilyInet, Table: "f", Name: "in", Type: "filter", Base: true, Hook: HookInput},
		{Family: FamilyIPv4, Table: "f", Name: "out", Type: "filter", Base: true, Hook: HookOutput},
		{Family: FamilyIPv4, Table: "f", Name: "jump-target"},                                            // regular chain
		{Family: FamilyIPv6, Table: "f", Name: "fw6", Type: "filter", Base: true, Hook: HookForward},     // outer header is IPv4
		{Family: FamilyBridge, Table: "b", Name: "fwb", Type: "filter", Base: true, Hook: HookForward},   // bridged frames only
		{Family: FamilyNetdev, Table: "n", Name: "ing", Type: "filter", Base: true, Hook: 0},             // ingress of a named device
		{Family: FamilyARP, Table: "a", Name: "arpin", Type: "filter", Base: true, Hook: HookPrerouting}, // ARP's input is hook 0
	}
	for _, tc := range []struct {
		name      string
		chains    []Chain
		chainsErr error
		legacy    []string
		legacyErr error
		clear     bool
		reason    string
	}{
		{name: "empty", clear: true, reason: "no nftables chain"},
		{name: "chains off the forward path", chains: harmless, clear: true, reason: "no nftables chain"},
		{name: "inet forward chain", chains: append(harmless, fw), reason: `nftables chain "inet f fw" on the forward hook`},
		{name: "ip filter FORWARD", chains: []Chain{ipFwd}, reason: `"ip filter FORWARD" on the forward hook`},
		{name: "ip raw PREROUTING", chains: []Chain{pre}, reason: "prerouting hook"},
		{name: "inet nat postrouting", chains: []Chain{post}, reason: "postrouting hook"},
		{name: "legacy filter table", legacy: []string{"filter"}, reason: "legacy iptables tables loaded (filter)"},
		{name: "legacy nat table", legacy: []string{"nat", "mangle"}, reason: "(nat, mangle)"},
		{name: "query error", chainsErr: syscall.EPERM, reason: "cannot read the nftables ruleset"},
		{name: "legacy read error", legacyErr: syscall.EACCES, reason: "cannot read the legacy iptables tables"},
	} {
		v := Decide(tc.chains, tc.chainsErr, tc.legacy, tc.legacyErr)
		if v.Clear != tc.clear || !strings.Contains(v.Reason, tc.reason) {
			t.Errorf("%s: %+v; want clear %v, reason with %q", tc.name, v, tc.clear, tc.reason)
		}
	}
}

// TestDecideLocal runs the per-packet NAT's rule on fake rulesets: a
// chain that could filter a locally delivered packet (ip or inet
// prerouting or input, any netdev base chain), a legacy table or an
// unreadable ruleset stops steering; the forward path's chains do not.
func TestDecideLocal(t *testing.T) {
	in := Chain{Family: FamilyInet, Table: "filter", Name: "input", Type: "filter", Base: true, Hook: HookInput}
	ipIn := Chain{Family: FamilyIPv4, Table: "filter", Name: "INPUT", Type: "filter", Base: true, Hook: HookInput}
	pre := Chain{Family: FamilyIPv4, Table: "nat", Name: "PREROUTING", Type: "nat", Base: true, Hook: HookPrerouting}
	ing := Chain{Family: FamilyNetdev, Table: "n", Name: "ing", Type: "filter", Base: true, Hook: 0}
	harmless := []Chain{
		{Family: FamilyInet, Table: "f", Name: "fw", Type: "filter", Base: true, Hook: HookForward},
		{Family: FamilyIPv4, Table: "f", Name: "out", Type: "filter", Base: true, Hook: HookOutput},
		{Family: FamilyInet, Table: "nat", Name: "post", Type: "nat", Base: true, Hook: HookPostrouting},
		{Family: FamilyIPv4, Table: "f", Name: "jump-target"},                                            // regular chain
		{Family: FamilyNetdev, Table: "n", Name: "regular"},                                              // regular netdev chain
		{Family: FamilyIPv6, Table: "f", Name: "in6", Type: "filter", Base: true, Hook: HookInput},       // steering is IPv4
		{Family: FamilyBridge, Table: "b", Name: "inb", Type: "filter", Base: true, Hook: HookInput},     // bridged frames only
		{Family: FamilyARP, Table: "a", Name: "arpin", Type: "filter", Base: true, Hook: HookPrerouting}, // ARP's input is hook 0
	}
	for _, tc := range []struct {
		name      string
		chains    []Chain
		chainsErr error
		legacy    []string
		legacyErr error
		clear     bool
		reason    string
	}{
		{name: "empty", clear: true, reason: "no nftables chain on the prerouting or input hook"},
		{name: "chains off the local path", chains: harmless, clear: true, reason: "no netdev chain"},
		{name: "inet filter input", chains: append(harmless, in), reason: `nftables chain "inet filter input" on the input hook can filter packets to this host`},
		{name: "ip filter INPUT", chains: []Chain{ipIn}, reason: `"ip filter INPUT" on the input hook`},
		{name: "ip nat PREROUTING", chains: []Chain{pre}, reason: "prerouting hook"},
		{name: "netdev ingress", chains: []Chain{ing}, reason: `"netdev n ing" on a device's ingress hook`},
		{name: "legacy filter table", legacy: []string{"filter"}, reason: "legacy iptables tables loaded (filter) can filter packets to this host"},
		{name: "query error", chainsErr: syscall.EPERM, reason: "cannot read the nftables ruleset, so an input firewall"},
		{name: "legacy read error", legacyErr: syscall.EACCES, reason: "cannot read the legacy iptables tables"},
	} {
		v := DecideLocal(tc.chains, tc.chainsErr, tc.legacy, tc.legacyErr)
		if v.Clear != tc.clear || !strings.Contains(v.Reason, tc.reason) {
			t.Errorf("%s: %+v; want clear %v, reason with %q", tc.name, v, tc.clear, tc.reason)
		}
	}
}

func TestParseLegacyTables(t *testing.T) {
	got := ParseLegacyTables([]byte("filter\nnat\n\n"))
	if strings.Join(got, ",") != "filter,nat" {
		t.Errorf("ParseLegacyTables = %q", got)
	}
	if got := ParseLegacyTables(nil); len(got) != 0 {
		t.Errorf("ParseLegacyTables(empty) = %q", got)
	}
}

// FuzzParseChains: any bytes give chains or an error, never a panic; what
// parses reparses the same.
func FuzzParseChains(f *testing.F) {
	f.Add(append(chainMsg(1, FamilyInet, "f", "fw", "filter", HookForward), doneMsg(1)...))
	f.Add(chainMsg(1, FamilyIPv4, "t", "c", "", -1))
	f.Add(nlMsg(nlmsgError, 0, 1, []byte{0xff, 0xff, 0xff, 0xff}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		chains, done, err := ParseChains(nil, b, 1)
		if err != nil {
			return
		}
		again, done2, err := ParseChains(nil, b, 1)
		if err != nil || done2 != done || len(again) != len(chains) {
			t.Fatalf("reparse differs: %v %v %d/%d", err, done2, len(again), len(chains))
		}
		for _, c := range chains {
			_ = c.Filters()
			_ = c.String()
		}
	})
}
