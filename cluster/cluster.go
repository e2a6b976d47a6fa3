// Package cluster is vxmesh's control-plane membership and state replication.
//
// Every daemon runs one Cluster: a hashicorp/memberlist node (SWIM failure
// detection, gossip always encrypted and authenticated with the 32-byte
// cluster key) plus a set of replicated key/value tables. Tables are eventually
// consistent: every write carries the writer's Lamport clock and name, deletes
// are tombstones, and conflicts resolve the same way on every node (higher
// version wins; on equal versions the lower owner name wins; then a tombstone
// beats a value; then the higher value bytes). Writes spread by memberlist
// broadcasts within a few gossip intervals and are reconciled by push/pull
// anti-entropy, so a node that missed broadcasts or joins late converges.
// An entry too large for a broadcast goes to each member over TCP; the
// writer resends it until each alive member acknowledges (deliver.go).
//
// A table declared NodeScoped holds per-node facts (endpoints, VTEP addresses,
// IPAM blocks): the entries written by a node disappear from every other node
// once that node has been dead for Config.NodeGrace or has left, and come back
// when it returns. The node that owns an entry of a node-scoped table is its
// authority: copies of its entries that it does not hold itself (left over
// from an earlier run of the process) are overwritten by a newer tombstone.
//
// Claim (on tables declared with DefineClaims) gives a resource to at most
// one of the nodes that see each other alive, confirmed with every alive
// member; ClaimBlock and Blocks implement IPAM block ownership with it on
// top of the "ipam-blocks" table; see ClaimBlock for the exact guarantee.
// Rejoin and the per-address backoff of ReconnectInterval bring lost and
// remembered members back.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultGossipPort is the TCP and UDP port of the gossip protocol.
const DefaultGossipPort = 7946

// Member states reported by Members.
const (
	StateAlive   = "alive"
	StateSuspect = "suspect"
	StateDead    = "dead"
	StateLeft    = "left"
)

// maxBroadcast is the largest message sent with the UDP gossip broadcasts;
// larger entries are sent to each member over TCP instead.
const maxBroadcast = 1024

// deadRetention is how long Members keeps reporting a dead or departed node,
// and how long a dead node is retried for reconnection.
const deadRetention = time.Hour

// Config configures a Cluster. Zero values select the documented defaults.
type Config struct {
	// NodeName is this node's unique name in the cluster. Required.
	NodeName string
	// BindAddr is the address the gossip sockets listen on (default: all
	// IPv4 addresses).
	BindAddr netip.Addr
	// AdvertiseAddr is the address other nodes use to reach this one
	// (default: BindAddr when it is specified, else chosen by memberlist).
	AdvertiseAddr netip.Addr
	// GossipPort is the TCP and UDP gossip port (default 7946).
	GossipPort int
	// Key is the cluster key (KeySize bytes). Required: gossip is always
	// encrypted.
	Key []byte
	// NodeGrace is how long a node must be dead before its entries in
	// node-scoped tables are removed (default 30 s).
	NodeGrace time.Duration
	// Meta is published to the other nodes in memberlist's node meta.
	Meta NodeMeta
	// Logger receives the cluster's and memberlist's log (default: discard).
	Logger *slog.Logger

	// TombstoneTTL is how long deletes are remembered before being reaped
	// (default the larger of 10 min and 2*NodeGrace). A node partitioned
	// away for longer than this may resurrect entries deleted meanwhile.
	TombstoneTTL time.Duration
	// ClaimTimeout bounds how long ClaimBlock waits for every alive member
	// to answer (default 5 s). A member declared dead is waited for until
	// it answers or has been dead for NodeGrace.
	ClaimTimeout time.Duration
	// Network, when set, carries the gossip in memory instead of on UDP
	// and TCP sockets (simulations): the node is at BindAddr:GossipPort
	// on it, and BindAddr must be specified.
	Network *MemNetwork
	// ReconnectInterval is the longest wait between two attempts to
	// rejoin a member that is dead or has left, or an address given to
	// Rejoin, so that a healed partition merges again and a restarted
	// node is found: the first attempt comes after 1 s (or
	// ReconnectInterval if shorter) and the wait doubles up to this
	// (default 60 s; negative disables).
	ReconnectInterval time.Duration

	// Tuning knobs applied over memberlist.DefaultLANConfig; zero keeps the
	// memberlist default. Tests use them for fast timing.
	GossipInterval      time.Duration
	ProbeInterval       time.Duration
	ProbeTimeout        time.Duration
	PushPullInterval    time.Duration
	TCPTimeout          time.Duration
	SuspicionMult       int
	GossipToTheDeadTime time.Duration
	// RetransmitMult is memberlist's own: how many times (times
	// ceil(log10(N+1))) each of its membership notices is gossiped. The
	// table broadcasts keep their own multiplier.
	RetransmitMult int

	// DisableCompression stops memberlist from LZW-compressing what this
	// node sends (it still reads compressed gossip, so nodes with and
	// without it mix). Compression makes gossip smaller but not faster
	// (packets are filled before they are compressed), and compressing a
	// packet allocates about 68 KB of LZW tables, decompressing it 20 KB: in
	// a simulation of hundreds of nodes in one process that was two thirds
	// of all allocation. The daemon keeps compression on.
	DisableCompression bool

	// TimeScale, when above 1, multiplies every timer of the node, its
	// own and memberlist's (after the defaults and the knobs above):
	// gossip, probe, push/pull and TCP timing, NodeGrace, TombstoneTTL,
	// ClaimTimeout, ReconnectInterval, resends and sweeps. It is for
	// simulations only: n nodes sharing a few cores each get a fraction
	// of one, and slowing every clock by the same factor keeps the
	// protocol's behaviour the same in "simulated" time. 0 or 1: real time.
	TimeScale int
}

// NodeMeta is what a node publishes about itself through memberlist.
type NodeMeta struct {
	// DataAddr is the node's VTEP: advertise IP and VXLAN data port.
	DataAddr netip.AddrPort
}

// Member is one node as seen by this node.
type Member struct {
	Name  string
	Addr  netip.AddrPort // gossip address
	Meta  NodeMeta
	State string // StateAlive, StateSuspect, StateDead or StateLeft
	Self  bool
}

// TableOptions declares how a table behaves.
type TableOptions struct {
	// NodeScoped ties every entry to the node that wrote it: it is removed
	// from the other nodes when the writer has been dead for NodeGrace or
	// has left, and reappears when the writer returns.
	NodeScoped bool
}

// Entry is one versioned key/value pair of a replicated table.
type Entry struct {
	Table   string
	Key     string
	Value   []byte
	Owner   string // node that wrote this version
	Version uint64 // Lamport clock of the write
	Deleted bool   // tombstone
}

// beats reports whether e wins over o in the deterministic conflict order.
func (e *Entry) beats(o *Entry) bool {
	if e.Version != o.Version {
		return e.Version > o.Version
	}
	if e.Owner != o.Owner {
		return e.Owner < o.Owner
	}
	if e.Deleted != o.Deleted {
		return e.Deleted
	}
	return string(e.Value) > string(o.Value)
}

func (e Entry) clone() Entry {
	e.Value = slices.Clone(e.Value)
	return e
}

type tkey struct{ table, key string }

type record struct {
	Entry
	stamp   time.Time // when this node stored it (tombstone reaping)
	expired bool      // local tombstone of a gone owner: never gossiped
}

type memberInfo struct {
	name    string
	addr    netip.AddrPort
	meta    NodeMeta
	state   string // alive, dead or left
	suspect bool
	since   time.Time
}

// Cluster is a running cluster node. Its methods are safe for concurrent use.
type Cluster struct {
	cfg Config
	log *slog.Logger
	ml  atomic.Pointer[memberlist.Memberlist]
	tr  *guardedTransport // the socket transport (nil on an in-memory network)
	// dropEntries, when set (tests only), is asked about every gossiped
	// or relayed entries message; true drops it, as a lost packet.
	dropEntries atomic.Pointer[func() bool]
	queue       *memberlist.TransmitLimitedQueue

	mu      sync.Mutex
	clock   uint64
	tables  map[string]TableOptions
	entries map[tkey]*record
	// byTable indexes entries by table, with each table's change log
	// (Changes); seq numbers the changes of every table.
	byTable map[string]*tableIndex
	seq     uint64
	// revs numbers the changes of every table for tableIndex.rev.
	revs uint64
	// blocks memoizes Blocks per network (see blocksLocked).
	blocks map[string]blocksMemo
	// claims indexes the live IPAM block claims (claimIndex).
	claims  claimIndex
	members map[string]*memberInfo
	gone    map[string]bool      // owners whose node-scoped entries are expired here
	unknown map[string]time.Time // owners with entries but no membership record
	subs    map[int]chan struct{}
	// gen counts the changes of the tables and the membership (Generation).
	gen     uint64
	nextSub int
	leaving map[string]bool   // nodes that announced they are leaving
	refused map[string]bool   // peers already logged as using another key
	drops   map[string]uint64 // refused entries and packets, by reason
	marks   map[string]uint64 // per table: highest version of a reaped tombstone
	logged  map[string]bool   // refusals already logged
	settled map[string]bool   // settledKey of the claims won by this node
	waiters map[uint64]chan *message
	nextID  uint64
	outbox  map[outKey]*delivery // pending deliveries of own large entries
	// regossip schedules own small writes for a broadcast again.
	regossip map[tkey]*regossip
	acks     map[uint64]*delivery // the same, by the id of their last send
	// catchUpAnswers counts the catch-up answers in flight.
	catchUpAnswers int
	closed         bool
	closing        bool // set before Close waits for goroutines; guards wg.Add

	// Also guarded by mu:
	claimRules map[string]claimRules       // by claim table
	round      *claimRound                 // the claim round in progress (claimMu serializes them)
	rejoin     map[netip.AddrPort]*backoff // addresses being retried
	rejoinWant map[netip.AddrPort]bool     // given to Rejoin, until alive
	// claiming is the settledKey of this node's claim being written and
	// confirmed (claimMu serializes them), "" when none: ClaimedBlocks
	// leaves its block out until the round has decided it.
	claiming string

	claimMu     sync.Mutex
	reconnectOn atomic.Bool
	// burst is set when the broadcast queue grew past regossipQueueMax,
	// or took more than that many broadcasts between two maintain ticks
	// that found it empty (queuedSinceEmpty), and no catch-up request has
	// followed yet (catchUpDue).
	burst            atomic.Bool
	queuedSinceEmpty atomic.Int64
	// quietTicks and nextCatchUp belong to maintain's goroutine.
	quietTicks  int
	nextCatchUp time.Time
	catchUpOn   atomic.Bool // a catch-up is running
	catchUpAns  chan bool   // answers to it: whether they brought news
	// alive counts the members whose state is alive, self included; the
	// event delegate moves it as a member's state changes (not by counting
	// the members: memberlist holds its node lock while calling it, once per
	// member per node as a cluster forms).
	alive atomic.Int64
	// served is when memberlist last served the table broadcasts, or
	// none waited (Unix nanoseconds; flush.go); fanout is memberlist's
	// GossipNodes.
	served    atomic.Int64
	fanout    int
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Start creates the local node, listening on BindAddr:GossipPort. It does
// not contact other nodes: call Join for that.
func Start(cfg Config) (*Cluster, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	c := newCluster(cfg)
	mc := c.memberlistConfig()
	tr, err := c.transport(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: start gossip on %s: %w",
			net.JoinHostPort(mc.BindAddr, strconv.Itoa(cfg.GossipPort)), err)
	}
	mc.Transport = tr
	if g, ok := tr.(*guardedTransport); ok {
		c.tr = g // nil on an in-memory network
	}
	c.setTimers(mc)

	ml, err := memberlist.Create(mc)
	if err != nil {
		tr.Shutdown()
		return nil, fmt.Errorf("cluster: start gossip on %s: %w",
			net.JoinHostPort(mc.BindAddr, strconv.Itoa(cfg.GossipPort)), err)
	}
	c.ml.Store(ml)
	c.fanout = mc.GossipNodes
	c.served.Store(time.Now().UnixNano())
	c.wg.Add(2)
	go c.maintain()
	go c.flushLoop(mc.GossipInterval)
	return c, nil
}

// complete checks cfg's name, key and port and fills in the defaults of
// what it leaves unset, scaled by TimeScale; the key is copied.
func (cfg *Config) complete() error {
	if cfg.NodeName == "" {
		return errors.New("cluster: node name is required")
	}
	if len(cfg.NodeName) > maxNameLen {
		return fmt.Errorf("cluster: node name longer than %d bytes", maxNameLen)
	}
	if len(cfg.Key) != KeySize {
		return fmt.Errorf("cluster: key is %d bytes, want %d", len(cfg.Key), KeySize)
	}
	if cfg.GossipPort == 0 {
		cfg.GossipPort = DefaultGossipPort
	}
	if cfg.GossipPort < 0 || cfg.GossipPort > 65535 {
		return fmt.Errorf("cluster: invalid gossip port %d", cfg.GossipPort)
	}
	if !cfg.BindAddr.IsValid() {
		cfg.BindAddr = netip.IPv4Unspecified()
	}
	if !cfg.AdvertiseAddr.IsValid() && !cfg.BindAddr.IsUnspecified() {
		cfg.AdvertiseAddr = cfg.BindAddr
	}
	if cfg.NodeGrace <= 0 {
		cfg.NodeGrace = 30 * time.Second
	}
	if cfg.TombstoneTTL <= 0 {
		cfg.TombstoneTTL = max(10*time.Minute, 2*cfg.NodeGrace)
	}
	if cfg.ClaimTimeout <= 0 {
		cfg.ClaimTimeout = 5 * time.Second
	}
	if cfg.ReconnectInterval == 0 {
		cfg.ReconnectInterval = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.TimeScale > 1 {
		k := time.Duration(cfg.TimeScale)
		cfg.NodeGrace *= k
		cfg.TombstoneTTL *= k
		cfg.ClaimTimeout *= k
		if cfg.ReconnectInterval > 0 {
			cfg.ReconnectInterval *= k
		}
	}
	cfg.Key = slices.Clone(cfg.Key)
	return nil
}

// newCluster returns the cluster of the completed cfg with its empty
// tables and its broadcast queue, not yet gossiping.
func newCluster(cfg Config) *Cluster {
	c := &Cluster{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "cluster"),
		tables:   map[string]TableOptions{ipamTable: {NodeScoped: true}},
		entries:  map[tkey]*record{},
		byTable:  map[string]*tableIndex{},
		members:  map[string]*memberInfo{},
		gone:     map[string]bool{},
		unknown:  map[string]time.Time{},
		subs:     map[int]chan struct{}{},
		leaving:  map[string]bool{},
		refused:  map[string]bool{},
		drops:    map[string]uint64{},
		marks:    map[string]uint64{},
		logged:   map[string]bool{},
		settled:  map[string]bool{},
		waiters:  map[uint64]chan *message{},
		outbox:   map[outKey]*delivery{},
		regossip: map[tkey]*regossip{},
		acks:     map[uint64]*delivery{},
		stop:     make(chan struct{}),
	}
	c.catchUpAns = make(chan bool, 1)
	c.claimRules = map[string]claimRules{
		ipamTable: {conflict: blocksOverlap},
	}
	c.rejoin, c.rejoinWant = map[netip.AddrPort]*backoff{}, map[netip.AddrPort]bool{}
	c.queue = &memberlist.TransmitLimitedQueue{
		// Not ml.NumMembers: GetBroadcasts calls this holding the queue
		// lock, and memberlist holds its node lock while calling our
		// event delegate.
		NumNodes:       func() int { return max(int(c.alive.Load()), 1) },
		RetransmitMult: 3,
	}
	return c
}

// memberlistConfig returns memberlist's configuration for c: its name,
// addresses, key and delegates (the transport and timers are set apart).
func (c *Cluster) memberlistConfig() *memberlist.Config {
	cfg := c.cfg
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.BindAddr = cfg.BindAddr.String()
	mc.BindPort = cfg.GossipPort
	mc.AdvertisePort = cfg.GossipPort
	if cfg.AdvertiseAddr.IsValid() {
		mc.AdvertiseAddr = cfg.AdvertiseAddr.String()
	}
	mc.SecretKey = cfg.Key
	mc.EnableCompression = !cfg.DisableCompression
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.Delegate = (*delegate)(c)
	mc.Events = (*delegate)(c)
	mc.Alive = (*delegate)(c)
	mc.Logger = log.New(&logBridge{c: c}, "", 0)
	return mc
}

// setTimers sets mc's intervals and multipliers from c's configuration
// (those it leaves unset keep memberlist's), scaled by TimeScale.
func (c *Cluster) setTimers(mc *memberlist.Config) {
	cfg := c.cfg
	mc.DeadNodeReclaimTime = cfg.NodeGrace
	setDur := func(dst *time.Duration, v time.Duration) {
		if v > 0 {
			*dst = v
		}
	}
	setDur(&mc.GossipInterval, cfg.GossipInterval)
	setDur(&mc.ProbeInterval, cfg.ProbeInterval)
	setDur(&mc.ProbeTimeout, cfg.ProbeTimeout)
	setDur(&mc.PushPullInterval, cfg.PushPullInterval)
	setDur(&mc.TCPTimeout, cfg.TCPTimeout)
	setDur(&mc.GossipToTheDeadTime, cfg.GossipToTheDeadTime)
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	if cfg.RetransmitMult > 0 {
		mc.RetransmitMult = cfg.RetransmitMult
	}
	if cfg.TimeScale > 1 {
		// DeadNodeReclaimTime is NodeGrace, scaled already.
		for _, d := range []*time.Duration{&mc.GossipInterval, &mc.ProbeInterval, &mc.ProbeTimeout,
			&mc.PushPullInterval, &mc.TCPTimeout, &mc.GossipToTheDeadTime, &mc.QueueCheckInterval} {
			*d = c.dur(*d)
		}
	}
}

// dur returns d stretched by Config.TimeScale: the length of a timer of
// the cluster's own.
func (c *Cluster) dur(d time.Duration) time.Duration {
	if c.cfg.TimeScale > 1 {
		return d * time.Duration(c.cfg.TimeScale)
	}
	return d
}

// transport listens on the sockets of mc, or attaches to Config.Network.
func (c *Cluster) transport(mc *memberlist.Config) (memberlist.NodeAwareTransport, error) {
	if c.cfg.Network != nil {
		if c.cfg.BindAddr.IsUnspecified() {
			return nil, errors.New("an in-memory network needs a bind address")
		}
		return c.cfg.Network.attach(netip.AddrPortFrom(c.cfg.BindAddr.Unmap(), uint16(c.cfg.GossipPort)))
	}
	return newGuardedTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{mc.BindAddr}, BindPort: mc.BindPort, Logger: mc.Logger,
	}, c.refuseGossip)
}

// JoinError is returned by Join when no node could be reached.
type JoinError struct {
	Addrs []string // the addresses tried, as HOST:PORT
	Err   error    // memberlist's error for each address
}

// Error implements error.
func (e *JoinError) Error() string {
	return fmt.Sprintf("join %s: no node answered; wrong cluster key or unreachable", strings.Join(e.Addrs, ", "))
}

// Unwrap returns the underlying errors.
func (e *JoinError) Unwrap() error { return e.Err }

// Join contacts the given nodes (HOST or HOST:PORT; the port defaults to
// GossipPort) and merges state with them. It returns how many answered; an
// error (a *JoinError) only if none did, which is what happens when they use
// another cluster key.
func (c *Cluster) Join(addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, nil
	}
	norm := make([]string, len(addrs))
	for i, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(strings.Trim(a, "[]"), strconv.Itoa(c.cfg.GossipPort))
		}
		norm[i] = a
	}
	n, err := c.ml.Load().Join(norm)
	if n == 0 {
		if err == nil {
			err = errors.New("no address answered")
		}
		return 0, &JoinError{Addrs: norm, Err: err}
	}
	return n, nil
}

// Leave announces that this node leaves the cluster and waits up to timeout
// for the announcement to spread. The other nodes then drop its node-scoped
// entries at once. Call Close afterwards. Leave returns within about
// timeout even if peers do not answer: a send still stuck then (a peer
// that stopped answering TCP holds it for TCPTimeout) is left to end on
// its own, and that peer learns of the departure by gossip.
func (c *Cluster) Leave(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	// memberlist does not tell its event delegate whether a node died or
	// left, so announce the departure first, reliably, to every peer.
	msg := (&message{Type: msgLeave, From: c.cfg.NodeName}).encode()
	var wg sync.WaitGroup
	for _, p := range c.alivePeers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.sendReliable(p, msg); err != nil {
				c.log.Debug("announce leave", "node", p.Name, "err", err)
			}
		}()
	}
	sent := make(chan struct{})
	go func() {
		wg.Wait()
		close(sent)
	}()
	t := time.NewTimer(timeout / 2)
	defer t.Stop()
	select {
	case <-sent:
	case <-t.C:
		c.log.Warn("announcing the departure: some peers did not answer in time")
	}
	// memberlist's own leave broadcast gets what is left of timeout.
	return c.ml.Load().Leave(max(time.Until(deadline), timeout/4))
}

// closeWait bounds how long Close waits for the node's goroutines: one
// dialling a peer that does not answer (a rejoin) would hold it for
// TCPTimeout.
const closeWait = time.Second

// Close stops the node without announcing anything (to the others it looks
// like a crash unless Leave was called first). Subscription channels are
// closed. Close is idempotent. It waits up to closeWait for the node's
// goroutines; one still dialling then ends on its own when its dial
// times out, on the shut memberlist.
func (c *Cluster) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.mu.Unlock()
		close(c.stop)
		ended := make(chan struct{})
		go func() {
			c.wg.Wait()
			close(ended)
		}()
		t := time.NewTimer(closeWait)
		select {
		case <-ended:
		case <-t.C:
			c.log.Warn("closing: some cluster work still waits on a peer; not waiting for it")
		}
		t.Stop()
		err = c.ml.Load().Shutdown()
		c.mu.Lock()
		c.closed = true
		for id, ch := range c.subs {
			close(ch)
			delete(c.subs, id)
		}
		c.mu.Unlock()
	})
	return err
}

// LocalName returns this node's name.
func (c *Cluster) LocalName() string { return c.cfg.NodeName }

// Members returns every node this node knows, itself included, sorted by
// name. Dead and departed nodes are reported for a while (one hour).
// "suspect" means a probe of the node failed and it has not refuted yet.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Member, 0, len(c.members))
	for _, mi := range c.members {
		st := mi.state
		if st == StateAlive && mi.suspect {
			st = StateSuspect
		}
		out = append(out, Member{Name: mi.name, Addr: mi.addr, Meta: mi.meta, State: st, Self: mi.name == c.cfg.NodeName})
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Subscribe returns a channel that receives a value whenever a table or the
// membership changed. Signals coalesce (the channel has capacity one), so a
// consumer re-reads what it needs with List or Members. cancel releases the
// subscription; the channel is closed by cancel or Close.
func (c *Cluster) Subscribe() (<-chan struct{}, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{}, 1)
	if c.closed {
		close(ch)
		return ch, func() {}
	}
	id := c.nextSub
	c.nextSub++
	c.subs[id] = ch
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if ch, ok := c.subs[id]; ok {
			close(ch)
			delete(c.subs, id)
		}
	}
}

// Generation returns a number that changes whenever a table or the
// membership changes (whenever Subscribe's channels are signalled), so that
// a consumer can keep what it derived from List, Blocks or Members for as
// long as the number is the same. Read it before reading the state it
// derives from.
func (c *Cluster) Generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// notifyLocked signals the subscribers and moves the generation on. c.mu
// must be held.
func (c *Cluster) notifyLocked() {
	c.gen++
	for _, ch := range c.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// maintain expires the entries of gone nodes, reaps tombstones and old
// members, and rejoins lost members.
func (c *Cluster) maintain() {
	defer c.wg.Done()
	tick := min(max(c.cfg.NodeGrace/4, c.dur(10*time.Millisecond)), c.dur(time.Second))
	if c.cfg.ReconnectInterval > 0 {
		tick = min(tick, c.cfg.ReconnectInterval)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			c.sweep(now)
			c.regossipDue(now)
			c.catchUpDue(now)
			if c.cfg.ReconnectInterval > 0 {
				c.reconnect(now)
			}
		}
	}
}

// sweep does the time-driven state changes of maintain.
func (c *Cluster) sweep(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	// With every member alive (the steady state) no member has a state to
	// age: skip the loop, as reconnect does.
	if int(c.alive.Load()) != len(c.members) {
		for name, mi := range c.members {
			if name == c.cfg.NodeName {
				continue
			}
			if mi.state == StateLeft || (mi.state == StateDead && now.Sub(mi.since) >= c.cfg.NodeGrace) {
				changed = c.expireOwnerLocked(name, now) || changed
			}
			if mi.state != StateAlive && now.Sub(mi.since) >= deadRetention {
				delete(c.members, name)
				delete(c.leaving, name)
				c.gen++ // Members changed; no one needs waking for it
			}
		}
	}
	// One pass over the entries: reap old tombstones, and find the owners
	// of node-scoped entries that this node has no membership record of
	// (yet or any more), which get the same grace as a dead member. (A
	// tombstone that expiring such an owner makes below is new, so it
	// would not have been reaped in this sweep either.)
	var seen map[string]bool
	for k, r := range c.entries {
		if r.Deleted {
			if now.Sub(r.stamp) >= c.cfg.TombstoneTTL {
				// Remember how new the delete was, so that a replay of
				// what it deleted stays refused (expired entries of a gone
				// owner were not deleted: they may come back).
				if !r.expired && r.Version > c.marks[k.table] {
					c.marks[k.table] = r.Version
				}
				c.dropLocked(k)
			}
			continue
		}
		if r.Owner == c.cfg.NodeName || c.members[r.Owner] != nil || !c.tables[k.table].NodeScoped {
			continue
		}
		if seen == nil {
			seen = map[string]bool{}
		}
		seen[r.Owner] = true
		if _, ok := c.unknown[r.Owner]; !ok {
			c.unknown[r.Owner] = now
		}
	}
	for owner, since := range c.unknown {
		switch {
		case !seen[owner]:
			delete(c.unknown, owner)
		case now.Sub(since) >= c.cfg.NodeGrace:
			changed = c.expireOwnerLocked(owner, now) || changed
			delete(c.unknown, owner)
		}
	}
	if changed {
		c.notifyLocked()
	}
}

// expireOwnerLocked turns the node-scoped entries of owner into local
// tombstones and stops accepting new ones until owner returns.
func (c *Cluster) expireOwnerLocked(owner string, now time.Time) bool {
	if c.gone[owner] {
		return false
	}
	c.gone[owner] = true
	changed := false
	n := 0
	for k, r := range c.entries {
		if r.Owner != owner || !c.tables[k.table].NodeScoped || r.expired {
			continue
		}
		if !r.Deleted {
			changed = true
			n++
		}
		r.Deleted, r.expired, r.Value, r.stamp = true, true, nil, now
		c.touchLocked(k)
	}
	if n > 0 {
		c.log.Info("removed entries of departed node", "node", owner, "entries", n)
	}
	return changed
}

// backoff is the retry schedule of one address to rejoin.
type backoff struct {
	next  time.Time
	delay time.Duration
}

// Rejoin makes the node keep trying to join the given gossip addresses in
// the background, with the backoff of ReconnectInterval, until a member is
// alive at each. A daemon passes the members it knew before a restart, so
// that a node started without a join address finds its cluster again.
func (c *Cluster) Rejoin(addrs []netip.AddrPort) {
	if c.cfg.ReconnectInterval <= 0 {
		return
	}
	c.mu.Lock()
	for _, a := range addrs {
		if a.IsValid() {
			c.rejoinWant[a] = true
		}
	}
	c.mu.Unlock()
	c.reconnect(time.Now())
}

// reconnect tries to join, in the background, the addresses whose retry
// is due: those given to Rejoin and those of dead or departed members,
// until a member is alive there. Each failure doubles the address's wait,
// up to ReconnectInterval.
func (c *Cluster) reconnect(now time.Time) {
	first := min(c.dur(time.Second), c.cfg.ReconnectInterval)
	c.mu.Lock()
	if len(c.rejoinWant) == 0 && len(c.rejoin) == 0 && int(c.alive.Load()) == len(c.members) {
		// Every member is alive and no address waits: nothing to retry
		// (and no per-member maps to build every tick on every node).
		c.mu.Unlock()
		return
	}
	alive := map[netip.AddrPort]bool{}
	lost := map[netip.AddrPort]bool{}
	for _, mi := range c.members {
		switch {
		case mi.state == StateAlive || mi.name == c.cfg.NodeName:
			alive[mi.addr] = true
		case mi.addr.IsValid():
			lost[mi.addr] = true
		}
	}
	for a := range c.rejoinWant {
		if alive[a] {
			delete(c.rejoinWant, a)
		}
	}
	for a := range c.rejoin {
		if alive[a] || (!lost[a] && !c.rejoinWant[a]) {
			delete(c.rejoin, a)
		}
	}
	var due []netip.AddrPort
	add := func(a netip.AddrPort, wait time.Duration) {
		if alive[a] {
			return
		}
		b := c.rejoin[a]
		if b == nil {
			b = &backoff{next: now.Add(wait), delay: first}
			c.rejoin[a] = b
		}
		if !now.Before(b.next) {
			due = append(due, a)
		}
	}
	for a := range c.rejoinWant {
		add(a, 0) // known from before a restart: try at once
	}
	for a := range lost {
		add(a, first) // memberlist itself retries for a moment first
	}
	c.mu.Unlock()
	if len(due) == 0 || !c.reconnectOn.CompareAndSwap(false, true) {
		return
	}
	c.spawn(func() {
		defer c.reconnectOn.Store(false)
		for _, a := range due {
			select {
			case <-c.stop:
				return
			default:
			}
			n, err := c.ml.Load().Join([]string{a.String()})
			c.mu.Lock()
			if b := c.rejoin[a]; b != nil {
				if n == 0 {
					b.delay = min(2*b.delay, c.cfg.ReconnectInterval)
				}
				b.next = time.Now().Add(b.delay)
			}
			c.mu.Unlock()
			if n > 0 {
				c.log.Info("rejoined node", "addr", a)
			} else {
				c.log.Debug("rejoin failed", "addr", a, "err", err)
			}
		}
	})
}

// sendReliable sends msg to node over TCP.
func (c *Cluster) sendReliable(node *memberlist.Node, msg []byte) error {
	ml := c.ml.Load()
	if ml == nil {
		return errors.New("cluster is starting")
	}
	return ml.SendReliable(node, msg)
}

// spawn runs f on a goroutine that Close waits for, unless Close has begun.
func (c *Cluster) spawn(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
}

// logBridge turns memberlist's log lines into slog records, and reports
// peers using another cluster key once per peer address instead of per packet.
// Other warnings and errors are rate-limited by their kind (the text before
// the first colon), whatever address they name: memberlist logs every
// malformed packet.
type logBridge struct {
	c *Cluster

	mu     sync.Mutex
	recent map[string]*logRepeat
}

// logRepeat is the rate-limit state of one kind of memberlist log line.
type logRepeat struct {
	last       time.Time
	suppressed int
}

// logRepeatWindow is how often one kind of memberlist warning is logged.
const logRepeatWindow = time.Minute

// allow reports whether a line of kind may be logged now, and how many were
// suppressed since the last one that was.
func (b *logBridge) allow(kind string, now time.Time) (bool, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.recent == nil || len(b.recent) >= 1024 {
		b.recent = map[string]*logRepeat{}
	}
	r := b.recent[kind]
	if r == nil {
		b.recent[kind] = &logRepeat{last: now}
		return true, 0
	}
	if now.Sub(r.last) < logRepeatWindow {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return true, n
}

func (b *logBridge) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lvl := slog.LevelDebug
	for tag, l := range map[string]slog.Level{"[ERR]": slog.LevelError, "[ERROR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo} {
		if strings.HasPrefix(line, tag) {
			lvl = l
			break
		}
	}
	c := b.c
	if strings.Contains(strings.ToLower(line), "decrypt") {
		peer := "unknown"
		if i := strings.LastIndex(line, "from="); i >= 0 {
			peer = line[i+len("from="):]
			if h, _, err := net.SplitHostPort(peer); err == nil {
				peer = h // TCP source ports change per connection
			}
		}
		c.mu.Lock()
		first := !c.refused[peer]
		if first {
			if len(c.refused) >= 4096 {
				clear(c.refused)
			}
			c.refused[peer] = true
		}
		c.mu.Unlock()
		if first {
			c.log.Warn("refusing gossip from a node with a different cluster key (logged once per peer)", "peer", peer, "detail", line)
		}
		return len(p), nil
	}
	if _, rest, ok := strings.Cut(line, "memberlist: Suspect "); ok {
		if name, _, ok := strings.Cut(rest, " has failed"); ok {
			c.mu.Lock()
			if mi := c.members[name]; mi != nil && mi.state == StateAlive && !mi.suspect {
				mi.suspect = true
				c.notifyLocked()
			}
			c.mu.Unlock()
		}
	}
	msg := line
	for _, tag := range []string{"[ERR] ", "[ERROR] ", "[WARN] ", "[INFO] ", "[DEBUG] "} {
		msg = strings.TrimPrefix(msg, tag)
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	args := []any{"source", "memberlist"}
	if lvl >= slog.LevelWarn {
		kind, _, _ := strings.Cut(msg, ":")
		kind, _, _ = strings.Cut(kind, " from=")
		ok, n := b.allow(kind, time.Now())
		if !ok {
			return len(p), nil
		}
		if n > 0 {
			args = append(args, "suppressed_repeats", n)
		}
	}
	c.log.Log(context.Background(), lvl, strings.TrimPrefix(line, "memberlist: "), args...)
	return len(p), nil
}

var _ io.Writer = (*logBridge)(nil)

// refuseGossip counts a memberlist packet or stream that the transport
// dropped and logs it once per peer address.
func (c *Cluster) refuseGossip(from net.Addr) {
	peer := "unknown"
	if from != nil {
		peer = from.String()
		if h, _, err := net.SplitHostPort(peer); err == nil {
			peer = h
		}
	}
	c.mu.Lock()
	c.drops["gossip-version"]++
	id := "gossip-version\x00" + peer
	first := !c.logged[id]
	if first {
		if len(c.logged) >= maxRefusalLogs {
			clear(c.logged)
		}
		c.logged[id] = true
	}
	c.mu.Unlock()
	if first {
		c.log.Warn("dropping gossip not encrypted with encryption version 1 (logged once per peer)", "peer", peer)
	}
}
