package tunnel

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/internal/aging"
	"github.com/vxmesh/vxmesh/packet"
)

// Segment is the part of one overlay network that crosses hosts: its VNI
// on a VTEP, with the network's peers, remote FDB and cipher. It is a
// vswitch.Sink: the switch hands it the frames to carry to other hosts
// with WriteFrames, and it hands received frames to the function set with
// SetInput. Its methods are safe for concurrent use.
type Segment struct {
	v       *VTEP
	vni     uint32
	mtu     int
	removed atomic.Bool
	cipher  atomic.Uint32 // esp.Cipher of an encrypted network, 0 in the clear

	input   atomic.Pointer[InputFunc]
	state   atomic.Pointer[netState] // immutable forwarding state
	learned *aging.Table[*peer]      // inner MACs in no static entry, by the VTEP they came from

	// mtuWarned: a datagram over the underlay's path MTU was logged
	// (once per network: the drops themselves are counted, "mtu").
	mtuWarned atomic.Bool

	mu      sync.Mutex // serialises control-plane writers of state and learned
	peerSet []netip.Addr
	extSet  map[netip.Addr]bool // external VTEPs, see SetExternal
	members []netip.Addr        // other cluster members' VTEPs, see SetMembers
	heard   []netip.Addr        // members not in peerSet that sent since the last SetPeers, sorted
	remotes map[packet.MAC]netip.Addr
	locals  map[packet.MAC]bool  // this host's endpoints, see SetLocals
	objs    map[netip.Addr]*peer // counters survive snapshot changes

	c netCounters
}

// netState is the immutable forwarding state the data path reads.
type netState struct {
	peers   []*peer              // flooding targets, ordered by address
	allowed map[netip.Addr]*peer // who may send us this network's frames: peers and members
	remotes map[packet.MAC]*peer // static remote FDB
	locals  map[packet.MAC]bool  // this host's endpoints: no VTEP sends from them
}

// peer is a remote VTEP of one network, with its counters.
type peer struct {
	addr netip.Addr
	dst  netip.AddrPort

	rxPackets, rxBytes atomic.Uint64
	txPackets, txBytes atomic.Uint64
	txDrops            atomic.Uint64

	// external is set for an external VTEP (SetExternal), whose frames
	// may move a MAC learned behind another VTEP; a member's frames only
	// teach MACs that are learned nowhere.
	external atomic.Bool
}

func newSegment(v *VTEP, vni uint32, mtu int) *Segment {
	n := &Segment{v: v, vni: vni, mtu: mtu, objs: map[netip.Addr]*peer{}}
	n.state.Store(&netState{allowed: map[netip.Addr]*peer{}, remotes: map[packet.MAC]*peer{}})
	n.learned = aging.New[*peer](v.aging, v.maxLearned)
	return n
}

// VNI returns the network's VXLAN network identifier.
func (n *Segment) VNI() uint32 { return n.vni }

// MTU returns the largest inner IP packet the network carries.
func (n *Segment) MTU() int { return n.mtu }

// SetInput sets the function that receives the network's decapsulated
// frames (vswitch.Port.Input of the network's tunnel port). It is
// called by the VTEP's receive loop only, never concurrently with itself.
// Until it is set, received frames are dropped as "no-input".
func (n *Segment) SetInput(fn InputFunc) {
	if fn == nil {
		n.input.Store(nil)
		return
	}
	n.input.Store(&fn)
}

// SetPeers sets the VTEPs of the network: every other host that has the
// network and every external VTEP. Broadcast, multicast and unknown
// unicast frames are replicated to each of them, and only datagrams from
// them are accepted. Learned MACs behind a VTEP that is no longer a peer
// are forgotten.
func (n *Segment) SetPeers(peers []netip.Addr) error {
	set, err := n.vtepSet("peer address", peers)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.peerSet = set
	n.heard = nil // the control plane's view of the peers replaces them
	n.publish()
	return nil
}

// SetExternal names the peers that are external VTEPs (not cluster
// members). Inner source MACs that are in no static entry are learned
// from every accepted VTEP's frames; an external VTEP's frames may also
// move a MAC learned behind another VTEP, as a bridge's do, while a
// member's frames only teach MACs that are learned nowhere (a member's
// endpoints reach the static FDB, SetRemotes, soon after their first
// frames). A frame that claims a MAC statically behind another VTEP is
// dropped ("spoofed-src").
func (n *Segment) SetExternal(vteps []netip.Addr) error {
	list, err := n.vtepSet("external VTEP address", vteps)
	if err != nil {
		return err
	}
	set := make(map[netip.Addr]bool, len(list))
	for _, a := range list {
		set[a] = true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.extSet = set
	n.publish()
	return nil
}

// SetMembers names the VTEPs of the other cluster members. Their
// datagrams are accepted on the network even while they are not peers: a
// host's first endpoint on a network sends before the record that makes
// the host a peer here has arrived (the cluster's tables are eventually
// consistent), and without this its first frames (a TCP SYN, a DNS
// query) would be dropped as "unknown-peer". The unknown source MACs of
// such frames are learned, so replies go back to that VTEP until the
// endpoint's static entry arrives and takes over, and a member whose
// frames taught a MAC joins the flooding targets until the next SetPeers
// (the new endpoint's ARP answers and requests reach its host); other
// members are not flooded to.
func (n *Segment) SetMembers(vteps []netip.Addr) error {
	set, err := n.vtepSet("member VTEP address", vteps)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.members = set
	n.heard = slices.DeleteFunc(n.heard, func(a netip.Addr) bool {
		_, ok := slices.BinarySearchFunc(set, a, netip.Addr.Compare)
		return !ok
	})
	n.publish()
	return nil
}

// vtepSet returns addrs unmapped, sorted and without repeats, or an error
// naming the first that is no unicast address (what says what it is).
func (n *Segment) vtepSet(what string, addrs []netip.Addr) ([]netip.Addr, error) {
	set := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return nil, fmt.Errorf("vni %d: invalid %s %s", n.vni, what, a)
		}
		set = append(set, a)
	}
	slices.SortFunc(set, netip.Addr.Compare)
	return slices.Compact(set), nil
}

// SetRemotes replaces the static remote FDB: frames to each MAC are sent
// to its VTEP only. The VTEPs should also be peers (SetPeers), or their
// datagrams are not accepted.
func (n *Segment) SetRemotes(remotes map[packet.MAC]netip.Addr) error {
	m := make(map[packet.MAC]netip.Addr, len(remotes))
	for mac, a := range remotes {
		a = a.Unmap()
		if mac.IsMulticast() || mac.IsZero() {
			return fmt.Errorf("vni %d: remote %s: not a unicast MAC", n.vni, mac)
		}
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("vni %d: remote %s: invalid VTEP address %s", n.vni, mac, a)
		}
		m[mac] = a
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.remotes = m
	n.publish()
	return nil
}

// SetLocals names the MACs of this host's endpoints on the network. No
// VTEP may send from one: such a frame is dropped as "spoofed-src" before
// its source is learned (the switch would drop it too, but the tunnel
// would have learned the MAC behind the sender, shown it in its FDB and
// flooded to the sender as a heard member), and a MAC learned before it
// became local is forgotten.
func (n *Segment) SetLocals(macs []packet.MAC) error {
	m := make(map[packet.MAC]bool, len(macs))
	for _, mac := range macs {
		if mac.IsMulticast() || mac.IsZero() {
			return fmt.Errorf("vni %d: local %s: not a unicast MAC", n.vni, mac)
		}
		m[mac] = true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.locals = m
	n.publish()
	return nil
}

// publish builds and swaps in a new netState from peerSet, remotes and
// locals; n.mu is held.
func (n *Segment) publish() {
	objs := make(map[netip.Addr]*peer, len(n.peerSet)+len(n.members))
	get := func(a netip.Addr) *peer {
		p := objs[a]
		if p == nil {
			if p = n.objs[a]; p == nil {
				p = &peer{addr: a, dst: netip.AddrPortFrom(a, n.v.port)}
			}
			objs[a] = p
		}
		return p
	}
	st := &netState{
		peers:   make([]*peer, 0, len(n.peerSet)),
		allowed: make(map[netip.Addr]*peer, len(n.peerSet)+len(n.members)),
		remotes: make(map[packet.MAC]*peer, len(n.remotes)),
		locals:  n.locals, // replaced whole by SetLocals, never written
	}
	for _, a := range n.peerSet {
		p := get(a)
		p.external.Store(n.extSet[a])
		st.peers = append(st.peers, p)
		st.allowed[a] = p
	}
	for _, a := range n.heard {
		if st.allowed[a] == nil {
			p := get(a)
			p.external.Store(false)
			st.peers = append(st.peers, p)
			st.allowed[a] = p
		}
	}
	slices.SortFunc(st.peers, func(a, b *peer) int { return a.addr.Compare(b.addr) })
	for _, a := range n.members {
		if st.allowed[a] == nil {
			p := get(a)
			p.external.Store(false)
			st.allowed[a] = p
		}
	}
	for mac, a := range n.remotes {
		st.remotes[mac] = get(a)
	}
	n.objs = objs
	n.state.Store(st)
	// Forget what was learned behind VTEPs that may no longer send, and
	// MACs that became static or local.
	n.learned.Filter(func(e *aging.Entry[*peer]) bool {
		p := e.Value
		return st.allowed[p.addr] == p && st.remotes[e.MAC] == nil && !st.locals[e.MAC]
	})
}

// learn records that src, in no static entry, was seen behind p; it
// reports whether src is now learned there. A member (not external) does
// not take a MAC that is live behind another VTEP. Called by the receive
// loop.
func (n *Segment) learn(src packet.MAC, p *peer, now int64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.state.Load()
	if st.allowed[p.addr] != p || st.remotes[src] != nil || st.locals[src] {
		return false // the VTEP may no longer send, or src became static or local, meanwhile
	}
	if e := n.learned.Lookup(src); e != nil && e.Value != p && !p.external.Load() && n.learned.Live(e, now) {
		return false
	}
	if !n.learned.Learn(src, p, now) {
		n.c.learnLimited.Add(1)
		return false
	}
	if !slices.Contains(st.peers, p) {
		// A member that is no peer yet: flood to it too, so the new
		// endpoint's ARP reaches it and its ARP gets answered.
		i, _ := slices.BinarySearchFunc(n.heard, p.addr, netip.Addr.Compare)
		n.heard = slices.Insert(n.heard, i, p.addr)
		n.publish()
	}
	return true
}

// sweep removes learned entries older than the aging time, and stops
// flooding to heard members (see learn) behind which nothing is learned
// any more: a member whose new endpoint's record never came (the endpoint
// left first) would otherwise get the network's floods until the peers
// next change.
func (n *Segment) sweep(now int64) {
	n.learned.Sweep(now)
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.heard) == 0 {
		return
	}
	behind := make(map[netip.Addr]bool, len(n.heard))
	n.learned.Range(func(e *aging.Entry[*peer]) { behind[e.Value.addr] = true })
	was := len(n.heard)
	n.heard = slices.DeleteFunc(n.heard, func(a netip.Addr) bool { return !behind[a] })
	if len(n.heard) != was {
		n.publish()
	}
}

// txScratch is one Write call's working state, reused through VTEP.txs.
type txScratch struct {
	one    [1]*peer // the fan-out of a frame to one peer
	msgs   []Message
	peers  []*peer // peer of msgs[i]
	frame  []int32 // frame index of msgs[i]
	ok     []bool  // per frame: at least one datagram was sent
	why    []dropReason
	fsize  []int32 // encrypted network: frame bytes of msgs[i]
	arena  []byte  // segments of super-segments, each behind its VXLAN header
	used   int     // bytes of arena in msgs
	sealed int     // encrypted network: ESP datagrams in msgs (espMaxHeld)
	err    error   // first error of WriteBatch
	// encrypted network: super-segment runs queued, sealed by send
	seal sealState
}

// txArenaSize is the segment arena of one txScratch: room for four 64 KiB
// super-segments' worth of segments before the pending datagrams are sent.
const txArenaSize = 256 << 10

func (v *VTEP) getTx() *txScratch {
	select {
	case sc := <-v.txs:
		return sc
	default:
		return &txScratch{
			msgs:  make([]Message, 0, 2*packet.BatchSize),
			peers: make([]*peer, 0, 2*packet.BatchSize),
			frame: make([]int32, 0, 2*packet.BatchSize),
			fsize: make([]int32, 0, 2*packet.BatchSize),
			seal: sealState{
				jobs:    make([]espJob, 0, packet.BatchSize),
				scratch: new(esp.Scratch),
			},
		}
	}
}

// start prepares sc for writing a batch of count frames.
func (sc *txScratch) start(count int) {
	if cap(sc.ok) < count {
		sc.ok = make([]bool, count)
		sc.why = make([]dropReason, count)
	}
	sc.ok, sc.why = sc.ok[:count], sc.why[:count]
	clear(sc.ok)
	clear(sc.why)
	sc.msgs, sc.peers, sc.frame, sc.fsize = sc.msgs[:0], sc.peers[:0], sc.frame[:0], sc.fsize[:0]
	sc.used, sc.sealed, sc.err = 0, 0, nil
}

// ensureArena allocates the segment arena on first use.
func (sc *txScratch) ensureArena() {
	if sc.arena == nil {
		sc.arena = make([]byte, txArenaSize)
	}
}

func (v *VTEP) putTx(sc *txScratch) {
	clear(sc.msgs) // do not keep the callers' buffers reachable
	clear(sc.peers)
	sc.seal.reset()
	sc.one = [1]*peer{}
	sc.err = nil
	select {
	case v.txs <- sc:
	default:
	}
}

// FDBEntry is one remote MAC of a network.
type FDBEntry struct {
	MAC  packet.MAC
	VTEP netip.Addr
	// Static is true for entries set with SetRemotes, false for learned
	// ones.
	Static bool
	// Age is the time since a learned MAC was last seen (0 for static
	// entries).
	Age time.Duration
}

// FDB lists the static and the live learned remote entries, ordered by
// MAC.
func (n *Segment) FDB() []FDBEntry {
	st, now := n.state.Load(), n.v.clock()
	out := make([]FDBEntry, 0, len(st.remotes))
	for mac, p := range st.remotes {
		out = append(out, FDBEntry{MAC: mac, VTEP: p.addr, Static: true})
	}
	n.learned.Range(func(e *aging.Entry[*peer]) {
		if n.learned.Live(e, now) && st.remotes[e.MAC] == nil {
			out = append(out, FDBEntry{MAC: e.MAC, VTEP: e.Value.addr, Age: time.Duration(now - e.Seen())})
		}
	})
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].MAC, out[j].MAC
		return string(a[:]) < string(b[:])
	})
	return out
}
