// Package fwprobe tells whether anything in this network namespace's
// netfilter can filter packets the kernel forwards: the condition under
// which the daemon hands TCP super-segments to the kernel as VXLAN
// super-packets (tunnel.KernelTunnel) without the operator's word, since
// the kernel forwards those from a TAP and a FORWARD firewall would drop
// them silently.
//
// The rule (Decide): a forwarded IPv4 packet passes the prerouting,
// forward and postrouting hooks; the kernel path is clear only if no
// nftables base chain of family ip or inet sits on one of them and no
// legacy iptables table (/proc/net/ip_tables_names) is loaded, since every
// legacy table has a chain on one of them. Other families cannot see
// these packets as forwarded: ip6 (the outer header is IPv4), arp, bridge
// (bridged frames only) and netdev, whose ingress and egress chains are
// bound to named devices and see the daemon's own UDP the same way at the
// underlay device. Where the ruleset cannot be read the answer is "not
// clear". Watch reports nftables changes as they happen, so a caller can
// check again at once rather than on a timer.
//
// DecideLocal is the rule for the other consumer, the routing mesh's
// per-packet NAT, whose tc filters take TCP segments to this host's own
// addresses away at the uplinks' ingress, before netfilter: it is clear
// only while nothing could filter a locally delivered packet (no base
// chain of family ip or inet on the prerouting or input hook, no netdev
// base chain, no legacy iptables table).
package fwprobe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// Netlink and nf_tables numbers. x/sys/unix has most of them; the ones
// below it lacks or names differently are from the uapi headers cited.
const (
	nlmsgHdrLen = 16 // struct nlmsghdr, include/uapi/linux/netlink.h
	nfgenLen    = 4  // struct nfgenmsg, include/uapi/linux/netfilter/nfnetlink.h
	nlaHdrLen   = 4  // struct nlattr
	nlaTypeMask = 0x3fff
	// nlmFDumpIntr is NLM_F_DUMP_INTR: the dump was interrupted by a
	// change and may be inconsistent.
	nlmFDumpIntr = 0x10

	nlmsgNoop  = 0x1 // NLMSG_NOOP
	nlmsgError = 0x2 // NLMSG_ERROR
	nlmsgDone  = 0x3 // NLMSG_DONE

	subsysNFTables = 10 // NFNL_SUBSYS_NFTABLES
	msgNewChain    = 3  // NFT_MSG_NEWCHAIN (enum nf_tables_msg_types, nf_tables.h)
	msgGetChain    = 4  // NFT_MSG_GETCHAIN

	// enum nft_chain_attributes and nft_hook_attributes
	// (include/uapi/linux/netfilter/nf_tables.h).
	attrChainTable = 1 // NFTA_CHAIN_TABLE
	attrChainName  = 3 // NFTA_CHAIN_NAME
	attrChainHook  = 4 // NFTA_CHAIN_HOOK
	attrChainType  = 7 // NFTA_CHAIN_TYPE
	attrHookNum    = 1 // NFTA_HOOK_HOOKNUM
	attrHookPrio   = 2 // NFTA_HOOK_PRIORITY
)

// Netfilter families (enum NFPROTO_*, include/uapi/linux/netfilter.h).
const (
	FamilyInet   = 1
	FamilyIPv4   = 2
	FamilyARP    = 3
	FamilyNetdev = 5
	FamilyBridge = 7
	FamilyIPv6   = 10
)

// IPv4/inet hooks (enum nf_inet_hooks, include/uapi/linux/netfilter.h).
const (
	HookPrerouting  = 0
	HookInput       = 1
	HookForward     = 2
	HookOutput      = 3
	HookPostrouting = 4
)

// Chain is one nftables chain of a GETCHAIN dump.
type Chain struct {
	Family uint8  // FamilyInet, FamilyIPv4, ...
	Table  string // its table's name
	Name   string
	Type   string // "filter", "nat", "route"; "" for a regular chain
	// Base is true for a base chain, one attached to a hook; Hook and
	// Priority are its hook number and priority.
	Base     bool
	Hook     uint32
	Priority int32
}

// String names the chain as nft does ("inet f fwd").
func (c Chain) String() string {
	return familyName(c.Family) + " " + c.Table + " " + c.Name
}

func familyName(f uint8) string {
	switch f {
	case FamilyInet:
		return "inet"
	case FamilyIPv4:
		return "ip"
	case FamilyARP:
		return "arp"
	case FamilyNetdev:
		return "netdev"
	case FamilyBridge:
		return "bridge"
	case FamilyIPv6:
		return "ip6"
	}
	return fmt.Sprintf("family-%d", f)
}

func hookName(h uint32) string {
	switch h {
	case HookPrerouting:
		return "prerouting"
	case HookInput:
		return "input"
	case HookForward:
		return "forward"
	case HookOutput:
		return "output"
	case HookPostrouting:
		return "postrouting"
	}
	return fmt.Sprintf("hook-%d", h)
}

// Filters reports whether c can see an IPv4 packet the kernel forwards: a
// base chain of family ip or inet on the prerouting, forward or
// postrouting hook.
func (c Chain) Filters() bool {
	if !c.Base || (c.Family != FamilyIPv4 && c.Family != FamilyInet) {
		return false
	}
	return c.Hook == HookPrerouting || c.Hook == HookForward || c.Hook == HookPostrouting
}

// Verdict is the answer of Decide.
type Verdict struct {
	// Clear is true where nothing can filter forwarded IPv4 packets.
	Clear bool
	// Reason says why, in a few words, for the log and `vxmesh stats`.
	Reason string
}

// Decide applies the rule of the package comment to a namespace's
// nftables chains (or the error that kept them from being read) and its
// legacy iptables tables (or the error reading them).
func Decide(chains []Chain, chainsErr error, legacy []string, legacyErr error) Verdict {
	if chainsErr != nil {
		return Verdict{Reason: "cannot read the nftables ruleset, so a forward firewall cannot be ruled out: " + chainsErr.Error()}
	}
	for _, c := range chains {
		if c.Filters() {
			return Verdict{Reason: fmt.Sprintf("nftables chain %q on the %s hook can filter forwarded packets", c.String(), hookName(c.Hook))}
		}
	}
	if legacyErr != nil {
		return Verdict{Reason: "cannot read the legacy iptables tables, so a forward firewall cannot be ruled out: " + legacyErr.Error()}
	}
	if len(legacy) > 0 {
		return Verdict{Reason: fmt.Sprintf("legacy iptables tables loaded (%s) can filter forwarded packets", strings.Join(legacy, ", "))}
	}
	return Verdict{Clear: true, Reason: "no nftables chain on the prerouting, forward or postrouting hook of family ip or inet, no legacy iptables table"}
}

// FiltersLocal reports whether c can see a TCP segment that tc steered
// away at an uplink's ingress before the kernel delivered it locally
// (DecideLocal): a base chain of family ip or inet on the prerouting or
// input hook, or any base chain of family netdev (its ingress hook runs
// after tc's ingress, so steering skips it; the chain dump does not say
// which devices a netdev chain is bound to, so every one counts).
func (c Chain) FiltersLocal() bool {
	switch {
	case !c.Base:
		return false
	case c.Family == FamilyNetdev:
		return true
	case c.Family == FamilyIPv4, c.Family == FamilyInet:
		return c.Hook == HookPrerouting || c.Hook == HookInput
	}
	return false
}

// DecideLocal is the rule for steering TCP segments to this host's own
// addresses away from the kernel at the uplinks' tc ingress (the routing
// mesh's per-packet NAT): such segments skip netfilter, so steering is
// clear only where nothing could have filtered them on their way to a
// local socket: no chain of which FiltersLocal is true and no legacy
// iptables table (every legacy table has a chain on the prerouting or
// input hook, or could be given one). Ruleset and legacy table errors are
// "not clear", as for Decide.
func DecideLocal(chains []Chain, chainsErr error, legacy []string, legacyErr error) Verdict {
	if chainsErr != nil {
		return Verdict{Reason: "cannot read the nftables ruleset, so an input firewall cannot be ruled out: " + chainsErr.Error()}
	}
	for _, c := range chains {
		if !c.FiltersLocal() {
			continue
		}
		if c.Family == FamilyNetdev {
			return Verdict{Reason: fmt.Sprintf("nftables chain %q on a device's %s hook can filter packets to this host", c.String(), netdevHookName(c.Hook))}
		}
		return Verdict{Reason: fmt.Sprintf("nftables chain %q on the %s hook can filter packets to this host", c.String(), hookName(c.Hook))}
	}
	if legacyErr != nil {
		return Verdict{Reason: "cannot read the legacy iptables tables, so an input firewall cannot be ruled out: " + legacyErr.Error()}
	}
	if len(legacy) > 0 {
		return Verdict{Reason: fmt.Sprintf("legacy iptables tables loaded (%s) can filter packets to this host", strings.Join(legacy, ", "))}
	}
	return Verdict{Clear: true, Reason: "no nftables chain on the prerouting or input hook of family ip or inet, no netdev chain, no legacy iptables table"}
}

// netdevHookName names a netdev-family hook (enum nf_dev_hooks).
func netdevHookName(h uint32) string {
	switch h {
	case 0:
		return "ingress"
	case 1:
		return "egress"
	}
	return fmt.Sprintf("hook-%d", h)
}

// ParseLegacyTables parses /proc/net/ip_tables_names: one table name a
// line.
func ParseLegacyTables(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// ErrDumpInterrupted is returned by ParseChains for a dump the kernel
// marked as interrupted by a concurrent change (NLM_F_DUMP_INTR); asking
// again gives a consistent one.
var ErrDumpInterrupted = errors.New("nftables dump interrupted by a concurrent change")

// ParseChains parses b, one read of the answer to a GETCHAIN dump (one or
// more netlink messages), appending its chains to chains. done is true
// once the dump's end (NLMSG_DONE) is in b. seq is the request's sequence
// number; a message with another one is an error. A kernel error
// (NLMSG_ERROR with a non-zero code) comes back as a syscall.Errno.
func ParseChains(chains []Chain, b []byte, seq uint32) (_ []Chain, done bool, err error) {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return chains, false, fmt.Errorf("netlink message header truncated: %d bytes", len(b))
		}
		l := binary.NativeEndian.Uint32(b[0:4])
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		mseq := binary.NativeEndian.Uint32(b[8:12])
		if l < nlmsgHdrLen || uint64(l) > uint64(len(b)) {
			return chains, false, fmt.Errorf("netlink message length %d out of range (%d bytes left)", l, len(b))
		}
		msg := b[nlmsgHdrLen:l]
		b = b[min(align4(int(l)), len(b)):]
		if mseq != seq {
			return chains, false, fmt.Errorf("netlink message of sequence %d, want %d", mseq, seq)
		}
		if flags&nlmFDumpIntr != 0 {
			return chains, false, ErrDumpInterrupted
		}
		switch typ {
		case nlmsgNoop:
			continue
		case nlmsgDone, nlmsgError:
			if len(msg) < 4 {
				return chains, false, fmt.Errorf("netlink message type %d truncated: %d bytes", typ, len(msg))
			}
			if code := int32(binary.NativeEndian.Uint32(msg[0:4])); code < 0 {
				return chains, false, syscall.Errno(-code)
			}
			if typ == nlmsgDone {
				return chains, true, nil
			}
			continue // an acknowledgement
		case subsysNFTables<<8 | msgNewChain:
			c, err := parseChain(msg)
			if err != nil {
				return chains, false, err
			}
			chains = append(chains, c)
		default:
			return chains, false, fmt.Errorf("unexpected netlink message type %#x in a chain dump", typ)
		}
	}
	return chains, false, nil
}

// parseChain parses a NEWCHAIN message's payload: struct nfgenmsg, then
// attributes.
func parseChain(msg []byte) (Chain, error) {
	if len(msg) < nfgenLen {
		return Chain{}, fmt.Errorf("nftables chain message truncated: %d bytes", len(msg))
	}
	c := Chain{Family: msg[0]}
	err := walkAttrs(msg[nfgenLen:], func(typ uint16, v []byte) error {
		switch typ {
		case attrChainTable:
			c.Table = attrString(v)
		case attrChainName:
			c.Name = attrString(v)
		case attrChainType:
			c.Type = attrString(v)
		case attrChainHook:
			var num bool
			err := walkAttrs(v, func(typ uint16, v []byte) error {
				switch typ {
				case attrHookNum:
					if len(v) != 4 {
						return fmt.Errorf("hook number of %d bytes", len(v))
					}
					c.Hook, num = binary.BigEndian.Uint32(v), true
				case attrHookPrio:
					if len(v) != 4 {
						return fmt.Errorf("hook priority of %d bytes", len(v))
					}
					c.Priority = int32(binary.BigEndian.Uint32(v))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if !num {
				return errors.New("hook without a hook number")
			}
			c.Base = true
		}
		return nil
	})
	if err != nil {
		return Chain{}, fmt.Errorf("nftables chain %q: %w", c.Name, err)
	}
	return c, nil
}

// walkAttrs calls fn with each netlink attribute of b: its type (flags
// masked off) and value.
func walkAttrs(b []byte, fn func(typ uint16, v []byte) error) error {
	for len(b) > 0 {
		if len(b) < nlaHdrLen {
			return fmt.Errorf("attribute header truncated: %d bytes", len(b))
		}
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < nlaHdrLen || l > len(b) {
			return fmt.Errorf("attribute length %d out of range (%d bytes left)", l, len(b))
		}
		if err := fn(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[nlaHdrLen:l]); err != nil {
			return err
		}
		b = b[min(align4(l), len(b)):]
	}
	return nil
}

// attrString returns a NUL-terminated string attribute's text.
func attrString(v []byte) string {
	if i := strings.IndexByte(string(v), 0); i >= 0 {
		v = v[:i]
	}
	return string(v)
}

func align4(n int) int { return (n + 3) &^ 3 }
