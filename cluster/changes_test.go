package cluster

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// feedView is a consumer's copy of one table kept with Changes.
type feedView struct {
	table  string
	cursor uint64
	view   map[string]Entry
	resync int // full answers after the first
	incr   int // incremental answers
}

// catchUp applies one Changes answer; it returns the number of entries and
// keys an incremental answer carried, -1 for a full one.
func (v *feedView) catchUp(c *Cluster) int {
	live, removed, next := c.Changes(v.table, v.cursor)
	if removed == nil {
		if v.cursor != 0 {
			v.resync++
		}
		v.view = map[string]Entry{}
	} else {
		v.incr++
	}
	for _, k := range removed {
		delete(v.view, k)
	}
	for _, e := range live {
		v.view[e.Key] = e
	}
	v.cursor = next
	if removed == nil {
		return -1
	}
	return len(live) + len(removed)
}

func (v *feedView) list() []Entry {
	var out []Entry
	for _, e := range v.view {
		out = append(out, e)
	}
	sortEntries(out)
	return out
}

// Applying Changes increments to a copy of a table gives the table's List,
// after any mix of own puts and deletes, merged remote writes and
// tombstones, owners expired and returning, and tombstones reaped; and an
// increment carries no more than the changes made since its cursor.
func TestChangesFeedEqualsList(t *testing.T) {
	seeds := 30
	if testing.Short() {
		seeds = 8
	}
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { checkChangesFeed(t, uint64(seed)) })
	}
}

func checkChangesFeed(t *testing.T, seed uint64) {
	mem := NewMemNetwork()
	cfg := testConfig("self", mustKey(t), DefaultGossipPort, &logSink{})
	cfg.BindAddr, cfg.Network = simAddr(0).Addr(), mem
	cfg.NodeGrace, cfg.TombstoneTTL = time.Hour, time.Hour // only the test sweeps
	c, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tables := []string{"endpoints", "networks"}
	if err := c.DefineTable("endpoints", TableOptions{NodeScoped: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.DefineTable("networks", TableOptions{}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	owners := []string{"self", "p1", "p2"}
	var views []*feedView
	for _, tb := range tables {
		for range 3 {
			views = append(views, &feedView{table: tb})
		}
	}
	vt := time.Now()
	changes := map[*feedView]int{} // changes logged (every table) since the view's cursor
	for step := range 400 {
		c.mu.Lock()
		seq0 := c.seq
		c.mu.Unlock()
		tb := tables[rng.IntN(2)]
		key := fmt.Sprintf("k%02d", rng.IntN(40))
		switch op := rng.IntN(20); {
		case op < 6:
			if err := c.Put(tb, key, []byte{byte(rng.IntN(3))}); err != nil {
				t.Fatal(err)
			}
		case op < 9:
			if err := c.Delete(tb, key); err != nil {
				t.Fatal(err)
			}
		case op < 15:
			c.mu.Lock()
			v := c.clock + uint64(rng.IntN(3))
			c.mu.Unlock()
			e := Entry{Table: tb, Key: key, Owner: owners[1+rng.IntN(2)], Version: v, Deleted: rng.IntN(4) == 0}
			if !e.Deleted {
				e.Value = []byte{byte(rng.IntN(3))}
			}
			c.merge([]Entry{e}, false)
		case op < 16:
			c.mu.Lock()
			c.expireOwnerLocked(owners[1+rng.IntN(2)], vt)
			c.notifyLocked()
			c.mu.Unlock()
		case op < 17:
			(*delegate)(c).NotifyJoin(&memberlist.Node{Name: owners[1+rng.IntN(2)], Addr: []byte{127, 0, 0, 9}, Port: 1})
		case op < 18:
			vt = vt.Add(2 * time.Hour)
			c.sweep(vt)
		default:
			// A burst of writes, so that a lagging view falls behind the
			// compaction of the change log.
			for i := range 30 {
				if err := c.Put(tb, fmt.Sprintf("b%02d", i), []byte{byte(step)}); err != nil {
					t.Fatal(err)
				}
			}
		}
		c.mu.Lock()
		for _, v := range views {
			changes[v] += int(c.seq - seq0)
		}
		c.mu.Unlock()
		for i, v := range views {
			// View 0 of each table catches up every step, the others now
			// and then.
			if i%3 != 0 && rng.IntN(1+5*(i%3)) != 0 {
				continue
			}
			n := v.catchUp(c)
			if n > changes[v] {
				t.Fatalf("seed %d step %d: an increment of %s carried %d entries, more than the %d changes since its cursor", seed, step, v.table, n, changes[v])
			}
			changes[v] = 0
			if got, want := v.list(), c.List(v.table); !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d step %d: view %d of %s:\n got %v\nwant %v", seed, step, i, v.table, got, want)
			}
		}
	}
	// Nothing changed: an increment is empty and not a resync.
	for _, v := range views {
		v.catchUp(c)
		if live, removed, next := c.Changes(v.table, v.cursor); len(live) != 0 || removed == nil || len(removed) != 0 || next != v.cursor {
			t.Fatalf("seed %d: no change since cursor %d of %s, got live %v removed %v next %d", seed, v.cursor, v.table, live, removed, next)
		}
	}
	resync, incr := 0, 0
	for _, v := range views {
		resync += v.resync
		incr += v.incr
	}
	t.Logf("seed %d: %d incremental answers, %d resyncs", seed, incr, resync)
	if incr == 0 {
		t.Fatalf("seed %d: no incremental answer", seed)
	}
}

// A cursor older than the compacted change log, or not from this Cluster,
// gets the whole table, flagged by a nil removed.
func TestChangesOldCursorIsFullResync(t *testing.T) {
	mem := NewMemNetwork()
	cfg := testConfig("self", mustKey(t), DefaultGossipPort, &logSink{})
	cfg.BindAddr, cfg.Network = simAddr(0).Addr(), mem
	cfg.NodeGrace, cfg.TombstoneTTL = time.Hour, time.Hour
	c, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.DefineTable("networks", TableOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Put("networks", "gone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	_, _, cur := c.Changes("networks", 0)
	if err := c.Delete("networks", "gone"); err != nil {
		t.Fatal(err)
	}
	c.sweep(time.Now().Add(2 * time.Hour)) // reap the tombstone
	for i := range 3 * minLogCompact {
		if err := c.Put("networks", fmt.Sprintf("k%d", i%4), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	live, removed, _ := c.Changes("networks", cur)
	if removed != nil || !reflect.DeepEqual(live, c.List("networks")) {
		t.Fatalf("a cursor from before a compaction that dropped a reaped key: live %v removed %v, want every entry and nil", live, removed)
	}
	_, _, next := c.Changes("networks", 0)
	if live, removed, _ := c.Changes("networks", next+1000); removed != nil || len(live) != 4 {
		t.Fatalf("a cursor from the future: live %v removed %v, want a full resync", live, removed)
	}
}
