package daemon

import (
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/crypto/esp"
)

// An encrypted network is usable once its hosts can seal frames to each
// other, which comes a moment after every host has its record: the
// rotator makes the ring when it learns of the first encrypted network,
// every node then makes its inbound SAs and publishes their SPIs, and a
// sender makes its outbound SA to a receiver once it has the receiver's
// SPI. Until then a frame between the two is dropped as no-sa (fail
// closed). Each node pushes its key state (and the rotator the ring) to
// every alive member as it changes (cluster.Push), and lists its outbound
// SAs in it (keyStateRecord.Out), so the create of an encrypted network
// waits until every alive node lists every other (awaitSAs): what it sees
// arrived by push, so every member has it too. An attach to an encrypted
// network waits the same way for the pairs its own host is in (a host
// that joined the cluster a moment ago).

// A pair that a wait gave up on (a host that is alive but makes no SAs:
// an older version, or one stuck) is not waited for again until it has
// its SA: otherwise every attach on the network would wait the whole
// timeout again.

// saReadyTimeout bounds that wait. It covers four hops (record, ring,
// SPIs, outbound SAs), each a push and a reconcile pass; past it the
// command still succeeds, with a WARN naming the pairs still missing.
const saReadyTimeout = 3 * time.Second

// saPair is a sender and a receiver of frames under cipher c.
type saPair struct {
	from, to string
	c        esp.Cipher
}

func (p saPair) String() string { return p.from + "->" + p.to }

// saGaps returns the pairs of alive nodes between which a frame of cipher
// c cannot be sealed yet as this node sees the cluster: the sender's key
// state lists no outbound SA to the receiver's current run under a key of
// the cluster's ring. With node set, only the pairs node is in. Callers
// hold d.mu.
func (d *Daemon) saGaps(c esp.Cipher, node string) []saPair {
	ring := d.clusterRing()
	states := d.clusterKeyStates()
	var live []string
	for _, m := range d.cl.Members() {
		if m.State == cluster.StateAlive && m.Meta.DataAddr.IsValid() {
			live = append(live, m.Name)
		}
	}
	sort.Strings(live)
	inRing := func(key uint32) bool {
		_, ok := ring.Key(key)
		return ok
	}
	var gaps []saPair
	for _, from := range live {
		for _, to := range live {
			if from == to || node != "" && from != node && to != node {
				continue
			}
			s, okS := states[from]
			r, okR := states[to]
			if ring == nil || !okS || !okR || !s.sendsTo(r.Pub, c, inRing) {
				gaps = append(gaps, saPair{from, to, c})
			}
		}
	}
	return gaps
}

// awaitSAs waits, up to saReadyTimeout and without d.mu, until no pair of
// alive nodes (with node set: no pair node is in) lacks an outbound SA of
// cipher c (saGaps), so that the first frame between any two of them is
// sealed, not dropped as no-sa. What is still missing then is logged with
// the command's object (what, name), not failed: the command is done, and
// the SAs follow.
func (d *Daemon) awaitSAs(what, name string, c esp.Cipher, node string) {
	ch, cancel := d.cl.Subscribe()
	defer cancel()
	t := time.NewTimer(saReadyTimeout)
	defer t.Stop()
	for {
		d.mu.Lock()
		gaps := d.keys.notGivenUp(d.saGaps(c, node), c, node)
		d.mu.Unlock()
		if len(gaps) == 0 {
			return
		}
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-t.C:
			d.mu.Lock()
			if d.keys.givenUp == nil {
				d.keys.givenUp = map[saPair]bool{}
			}
			for _, p := range gaps {
				d.keys.givenUp[p] = true
			}
			d.mu.Unlock()
			names := make([]string, len(gaps))
			for i, p := range gaps {
				names[i] = p.String()
			}
			d.log.Warn("done, but some hosts cannot encrypt to each other yet (frames between them are dropped as no-sa until they can)", what, name, "missing", strings.Join(names, " "), "after", saReadyTimeout)
			return
		}
	}
}

// notGivenUp returns the gaps of cipher c (saGaps with node) that no wait
// gave up on, and forgets the pairs given up on that are in the same scope
// but no longer gaps. Callers hold d.mu.
func (ks *keyState) notGivenUp(gaps []saPair, c esp.Cipher, node string) []saPair {
	for p := range ks.givenUp {
		if p.c == c && (node == "" || p.from == node || p.to == node) && !slices.Contains(gaps, p) {
			delete(ks.givenUp, p)
		}
	}
	out := gaps[:0]
	for _, p := range gaps {
		if !ks.givenUp[p] {
			out = append(out, p)
		}
	}
	return out
}

// awaitNetworkSAs is awaitSAs for an attach of container name to network
// net on this node, if net is encrypted.
func (d *Daemon) awaitNetworkSAs(net, name string) {
	d.mu.Lock()
	var c esp.Cipher
	if n := d.networks[net]; n != nil {
		c = n.cipher
	}
	d.mu.Unlock()
	if c != 0 {
		d.awaitSAs("container", name, c, d.cfg.Node)
	}
}
