package cluster

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Claims: a node that wants a resource no other node may have at the same
// time (an IPAM block, a network's name, subnet and VNI) writes a claim
// entry, keyed "<group>|<resource>|<node>", into a node-scoped claim table
// and confirms it with every alive member before using the resource. The
// rules of a claim table say which resources of one group exclude each
// other (conflict) and which are already in use for good (taken).

// claimRules are the rules of one claim table.
type claimRules struct {
	// conflict reports whether resources a and b of one group exclude
	// each other. It must be symmetric and true for a == b.
	conflict func(a, b string) bool
	// taken, when set, returns the entries that show resource of group
	// already in use in this node's view of the cluster (for example a
	// record published after an earlier claim was released); none means
	// it is free. It is called without c.mu held.
	taken func(group, resource string) []Entry
}

// ClaimConflict is the error of a claim that lost: Node won a conflicting
// claim on Resource (empty when that node only reported the resource as
// taken).
type ClaimConflict struct {
	Node     string
	Resource string
}

// Error implements error.
func (e *ClaimConflict) Error() string {
	if e.Resource == "" {
		return fmt.Sprintf("claimed concurrently on node %s", e.Node)
	}
	return fmt.Sprintf("claimed concurrently on node %s (%s)", e.Node, e.Resource)
}

// DefineClaims declares table as a node-scoped claim table for Claim.
// conflict(a, b) reports whether two resources of one group exclude each
// other; it must be symmetric and true when a == b. taken, which may be
// nil, returns the entries (of any table) that show a resource already in
// use for good in this node's view: a claim on it loses, and the entries
// are sent to the claimer, which then knows why. taken must not wait for
// a claim. Every node must define the same table with the same rules.
func (c *Cluster) DefineClaims(table string, conflict func(a, b string) bool, taken func(group, resource string) []Entry) error {
	if err := c.DefineTable(table, TableOptions{NodeScoped: true}); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.claimRules[table] = claimRules{conflict: conflict, taken: taken}
	return nil
}

// Claim claims resource in group of a table declared with DefineClaims for
// this node, with the guarantee described at ClaimBlock: once it returns
// nil, no node that has not been cut off from this one for NodeGrace can
// win a conflicting claim until ReleaseClaim. A claim that loses returns a
// *ClaimConflict and is withdrawn. group and resource must not contain '|'.
func (c *Cluster) Claim(table, group, resource string) error {
	if group == "" || resource == "" || strings.Contains(group+resource, "|") ||
		len(claimKey(group, resource))+len(c.cfg.NodeName) > maxKeyLen {
		return fmt.Errorf("claim %q in %q: invalid", resource, group)
	}
	c.mu.Lock()
	_, ok := c.claimRules[table]
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("table %q: not a claim table", table)
	}
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	return c.claimLocked(table, group, resource)
}

// claimLocked writes, confirms and settles one claim; c.claimMu is held.
func (c *Cluster) claimLocked(table, group, resource string) error {
	key := claimKey(group, resource) + c.cfg.NodeName
	c.mu.Lock()
	c.claiming = settledKey(table, group, resource)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.claiming = ""
		c.mu.Unlock()
	}()
	if err := c.Put(table, key, nil); err != nil {
		return err
	}
	loss, err := c.settleClaim(table, group, resource)
	if err != nil || loss != nil {
		c.Delete(table, key)
	}
	if err != nil {
		return err
	}
	if loss != nil {
		return loss
	}
	c.mu.Lock()
	c.settled[settledKey(table, group, resource)] = true
	c.mu.Unlock()
	return nil
}

// ReleaseClaim gives up this node's claim on resource of group.
func (c *Cluster) ReleaseClaim(table, group, resource string) error {
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	c.mu.Lock()
	delete(c.settled, settledKey(table, group, resource))
	c.mu.Unlock()
	return c.Delete(table, claimKey(group, resource)+c.cfg.NodeName)
}

// claimResendInterval is how long a claim round waits for a member's
// answer, after its request was sent, before asking it again; each further
// wait is twice as long, up to claimResendMax.
const (
	claimResendInterval = time.Second
	claimResendMax      = 8 * time.Second
)

// claimAsk is the state of a claim round's requests to one member.
type claimAsk struct {
	inFlight bool          // a request is being sent
	next     time.Time     // when to ask again if no answer came
	wait     time.Duration // the wait after the next send
}

func claimKey(group, resource string) string { return group + "|" + resource + "|" }

func settledKey(table, group, resource string) string {
	return table + "\x00" + claimKey(group, resource)
}

// parseClaimKey returns the group and resource of a claim entry.
func parseClaimKey(e *Entry) (group, resource string, ok bool) {
	rest, found := strings.CutSuffix(e.Key, "|"+e.Owner)
	if !found {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '|')
	if i < 0 {
		return "", "", false
	}
	return rest[:i], rest[i+1:], true
}

// earlier reports whether claim a was made before claim b: the lower
// Lamport version, then the lower node name. A node that saw a claim
// before writing its own always writes a higher version.
func earlier(a, b *Entry) bool {
	return a.Version < b.Version || (a.Version == b.Version && a.Owner < b.Owner)
}

// conflictingLocked returns the live claims of table and group whose
// resource conflicts with resource, the equal one included.
func (c *Cluster) conflictingLocked(table, group, resource string) []*Entry {
	if table == ipamTable {
		// The claims of group's blocks, from the index: a block
		// conflicts with the blocks it overlaps (blocksOverlap). A
		// resource that is no prefix is looked for by the walk.
		if p, err := netip.ParsePrefix(resource); err == nil {
			var out []*Entry
			for b, recs := range c.claims.nets[group] {
				if b.Overlaps(p) {
					for _, r := range recs {
						e := r.Entry
						out = append(out, &e)
					}
				}
			}
			return out
		}
	}
	return c.conflictingWalkLocked(table, group, resource)
}

// conflictingWalkLocked is conflictingLocked by a walk of every claim of
// table (the reference the IPAM index is tested against).
func (c *Cluster) conflictingWalkLocked(table, group, resource string) []*Entry {
	conflict := c.claimRules[table].conflict
	var out []*Entry
	for _, r := range c.recsLocked(table) {
		if r.Deleted {
			continue
		}
		g, res, ok := parseClaimKey(&r.Entry)
		if ok && g == group && conflict(res, resource) {
			e := r.Entry
			out = append(out, &e)
		}
	}
	return out
}

// settleClaim runs the confirmation round of this node's claim on resource
// and decides it: nil means this node won. The claim is sent over TCP to
// every member whose claims still count (mustAnswerLocked); each answers
// with the conflicting claims it knows (the request's claim merged first)
// and whether it holds one of them after its own round or knows the
// resource as taken. An alive member that does not answer fails the round
// after Config.ClaimTimeout; one declared dead is waited for until it
// answers or is gone (dead for NodeGrace), since a member wrongly declared
// dead on a busy host may be claiming the same resource.
func (c *Cluster) settleClaim(table, group, resource string) (*ClaimConflict, error) {
	round, mine := c.openClaimRound(table, group, resource)
	if round == nil {
		return &ClaimConflict{Node: c.cfg.NodeName}, nil
	}
	defer func() {
		c.mu.Lock()
		delete(c.waiters, round.id)
		c.round = nil
		c.mu.Unlock()
	}()
	held, err := round.run(group, resource)
	if err != nil {
		return nil, err
	}
	if held != nil {
		return held, nil
	}
	if loss := c.decideClaim(table, group, resource, &mine); loss != nil {
		return loss, nil
	}
	if taken := c.rules(table).taken; taken != nil {
		if in := taken(group, resource); len(in) > 0 {
			return &ClaimConflict{Node: in[0].Owner}, nil
		}
	}
	return nil, nil
}

// claimRound is one confirmation round of this node's claim: the request,
// the members that must still answer (peers: changed under Cluster.mu,
// which ClaimWaits reads it under), the state of the request sent to
// each, and where their answers and the ends of the sends arrive.
type claimRound struct {
	c       *Cluster
	table   string
	id      uint64
	req     []byte
	peers   map[string]*memberlist.Node
	asks    map[string]*claimAsk
	answers chan *message
	sent    chan string // at most one send per member in flight
}

// openClaimRound registers a round for this node's claim of resource
// (its answers' waiter) with the members that must answer it, and
// returns it with the claim; nil when this node holds no such claim.
func (c *Cluster) openClaimRound(table, group, resource string) (*claimRound, Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.entries[tkey{table, claimKey(group, resource) + c.cfg.NodeName}]
	if r == nil || r.Deleted {
		return nil, Entry{}
	}
	mine := r.Entry.clone()
	c.nextID++
	id := c.nextID
	peers := map[string]*memberlist.Node{}
	for _, mi := range c.members {
		if mi.name != c.cfg.NodeName && c.mustAnswerLocked(mi) {
			peers[mi.name] = &memberlist.Node{Name: mi.name, Addr: mi.addr.Addr().AsSlice(), Port: mi.addr.Port()}
		}
	}
	ch := make(chan *message, 2*len(peers)+1)
	c.waiters[id] = ch
	c.round = &claimRound{c: c, table: table, id: id, peers: peers, answers: ch,
		req: (&message{Type: msgClaimReq, ID: id, From: c.cfg.NodeName, Entries: []Entry{mine}}).encode()}
	return c.round, mine
}

// ClaimWait is a member declared dead that this node's claim in progress
// still waits for (see Claim): the claim goes on without it once it has
// been dead for NodeGrace, unless it answers first.
type ClaimWait struct {
	Member    string
	DeadSince time.Time // when this node declared it dead
	Until     time.Time // DeadSince + NodeGrace: the claim waits no longer
}

// ClaimWaits returns, sorted by name, the members declared dead that this
// node's claim in progress waits for (none when no claim waits), so that
// a caller whose create is held up can say why and for how long at most.
func (c *Cluster) ClaimWaits() []ClaimWait {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.round == nil {
		return nil
	}
	var out []ClaimWait
	for name := range c.round.peers {
		if mi := c.members[name]; mi != nil && mi.state == StateDead {
			out = append(out, ClaimWait{Member: name, DeadSince: mi.since, Until: mi.since.Add(c.cfg.NodeGrace)})
		}
	}
	slices.SortFunc(out, func(a, b ClaimWait) int { return strings.Compare(a.Member, b.Member) })
	return out
}

// run asks every member and waits until each has answered or is gone; it
// returns the first conflicting claim a member holds, or an error when an
// alive member does not answer within Config.ClaimTimeout or the cluster
// closes.
//
// A request or answer lost on the way (a stream a busy peer closed
// unread) is not waited for until ClaimTimeout: the members that have
// not answered are asked again, each once its previous request has
// been sent and the wait after it has passed, which doubles each time.
// Requests are not stacked on a member whose TCP is slow to accept:
// each would be answered, adding to the load that delays the round.
// Answering is idempotent.
func (r *claimRound) run(group, resource string) (*ClaimConflict, error) {
	c := r.c
	r.sent = make(chan string, len(r.peers))
	r.asks = make(map[string]*claimAsk, len(r.peers))
	for name := range r.peers {
		r.asks[name] = &claimAsk{wait: c.dur(claimResendInterval)}
		r.send(name, r.asks[name])
	}
	var held *ClaimConflict
	waitLogged := false
	deadline := time.NewTimer(c.cfg.ClaimTimeout)
	defer deadline.Stop()
	recheck := time.NewTicker(c.dur(50 * time.Millisecond))
	defer recheck.Stop()
	for len(r.peers) > 0 {
		select {
		case m := <-r.answers:
			if _, waiting := r.peers[m.From]; !waiting {
				continue // an answer to a request sent again
			}
			if m.Held && held == nil {
				held = heldConflict(r.table, m)
			}
			c.mu.Lock() // ClaimWaits reads r.peers
			delete(r.peers, m.From)
			c.mu.Unlock()
		case name := <-r.sent:
			a := r.asks[name]
			a.inFlight, a.next = false, time.Now().Add(a.wait)
			a.wait = min(2*a.wait, c.dur(claimResendMax))
		case now := <-recheck.C:
			r.recheck(now)
		case <-deadline.C:
			if names := c.aliveAmong(r.peers); len(names) > 0 {
				return nil, fmt.Errorf("not confirmed by %s within %v (down or unreachable? once the cluster declares it dead, "+
					"a claim waits for it at most the node grace, %v, then goes on without it)", strings.Join(names, ", "), c.cfg.ClaimTimeout, c.cfg.NodeGrace)
			}
			// Only members declared dead are missing: wait until they
			// answer or are gone (at most NodeGrace).
			if !waitLogged {
				waitLogged = true
				c.log.Warn("a claim waits for members declared dead: until they answer or have been dead for the node grace",
					"members", strings.Join(slices.Sorted(maps.Keys(r.peers)), ","), "node_grace", c.cfg.NodeGrace, "group", group, "resource", resource)
			}
			deadline.Reset(c.cfg.ClaimTimeout)
		case <-c.stop:
			return nil, errors.New("cluster is closed")
		}
	}
	return held, nil
}

// send sends the request to member name in the background, reporting on
// r.sent when done.
func (r *claimRound) send(name string, a *claimAsk) {
	c := r.c
	a.inFlight = true
	p := r.peers[name]
	c.spawn(func() {
		if err := c.sendReliable(p, r.req); err != nil {
			c.log.Debug("send claim", "node", p.Name, "table", r.table, "err", err)
		}
		r.sent <- name
	})
}

// recheck drops the members gone meanwhile (left, or dead for NodeGrace:
// their claims expired), which no longer need to answer, and asks again
// those whose wait has passed.
func (r *claimRound) recheck(now time.Time) {
	c := r.c
	c.mu.Lock()
	for name := range r.peers {
		if mi := c.members[name]; mi == nil || !c.mustAnswerLocked(mi) {
			delete(r.peers, name)
		}
	}
	c.mu.Unlock()
	for name := range r.peers {
		if a := r.asks[name]; !a.inFlight && now.After(a.next) {
			c.mu.Lock()
			c.drops["claim-resent"]++
			c.mu.Unlock()
			r.send(name, a)
		}
	}
}

// mustAnswerLocked reports whether member mi must answer a claim round
// before it is decided: every member whose claims still count, that is
// every member but those that left or have been dead for NodeGrace (gone:
// their entries expired). A member merely declared dead may be alive and
// claiming too (a false suspicion on a busy host): deciding without it
// could let both win. c.mu must be held.
func (c *Cluster) mustAnswerLocked(mi *memberInfo) bool {
	return mi.state != StateLeft && !c.gone[mi.name]
}

// aliveAmong returns, sorted, the members of peers seen alive.
func (c *Cluster) aliveAmong(peers map[string]*memberlist.Node) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var names []string
	for name := range peers {
		if mi := c.members[name]; mi != nil && mi.state == StateAlive {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// heldConflict describes the answer m of a member that holds a conflicting
// claim (one of its own in m.Entries) or knows the resource as taken (a
// record of another table in m.Entries, whose writer is named).
func heldConflict(table string, m *message) *ClaimConflict {
	for _, e := range m.Entries {
		if e.Table == table && e.Owner == m.From {
			if _, res, ok := parseClaimKey(&e); ok {
				return &ClaimConflict{Node: m.From, Resource: res}
			}
		}
	}
	for _, e := range m.Entries {
		if e.Table != table {
			return &ClaimConflict{Node: e.Owner}
		}
	}
	return &ClaimConflict{Node: m.From}
}

func (c *Cluster) rules(table string) claimRules {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.claimRules[table]
}

// decideClaim returns the conflicting claim that beats mine, if any: an
// earlier one, or one this node already holds.
func (c *Cluster) decideClaim(table, group, resource string, mine *Entry) *ClaimConflict {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.conflictingLocked(table, group, resource) {
		if e.Key == mine.Key {
			continue
		}
		_, res, _ := parseClaimKey(e)
		if earlier(e, mine) || (e.Owner == c.cfg.NodeName && c.settled[settledKey(table, group, res)]) {
			return &ClaimConflict{Node: e.Owner, Resource: res}
		}
	}
	return nil
}

// answerClaim replies to a claim request with every conflicting claim this
// node knows (the request's claim is already merged) and whether this node
// holds one of them after its own confirmation round or knows the resource
// as taken.
func (c *Cluster) answerClaim(req *message) {
	if len(req.Entries) != 1 {
		return
	}
	table := req.Entries[0].Table
	group, resource, ok := parseClaimKey(&req.Entries[0])
	c.mu.Lock()
	rules, defined := c.claimRules[table]
	if !ok || !defined {
		c.mu.Unlock()
		return
	}
	resp := &message{Type: msgClaimResp, ID: req.ID, From: c.cfg.NodeName}
	for _, e := range c.conflictingLocked(table, group, resource) {
		resp.Entries = append(resp.Entries, *e)
		if _, res, _ := parseClaimKey(e); e.Owner == c.cfg.NodeName && c.settled[settledKey(table, group, res)] {
			resp.Held = true
		}
	}
	c.mu.Unlock()
	if rules.taken != nil {
		if in := rules.taken(group, resource); len(in) > 0 {
			resp.Held = true
			resp.Entries = append(resp.Entries, in...)
		}
	}
	b := resp.encode()
	c.spawn(func() {
		to := c.awaitMember(req.From)
		if to == nil {
			c.log.Debug("answer claim: unknown node", "node", req.From)
			return
		}
		if err := c.sendReliable(to, b); err != nil {
			c.log.Debug("answer claim", "node", to.Name, "table", table, "err", err)
		}
	})
}

// awaitMember returns the address of member name, waiting up to
// ClaimTimeout for it to become known: a node that just joined through
// another one can send a claim before gossip has told this node about it.
func (c *Cluster) awaitMember(name string) *memberlist.Node {
	deadline := time.Now().Add(c.cfg.ClaimTimeout)
	for {
		c.mu.Lock()
		mi := c.members[name]
		var to *memberlist.Node
		if mi != nil {
			to = &memberlist.Node{Name: mi.name, Addr: mi.addr.Addr().AsSlice(), Port: mi.addr.Port()}
		}
		c.mu.Unlock()
		if to != nil || time.Now().After(deadline) {
			return to
		}
		select {
		case <-c.stop:
			return nil
		case <-time.After(c.dur(20 * time.Millisecond)):
		}
	}
}
