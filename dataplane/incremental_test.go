package dataplane

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"testing"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/vswitch"
)

// portWorld is a random desired state of two networks' ports: each port
// has a name, a device generation (a new generation is a new device), a
// MAC and an address from small pools, so that ports collide now and
// then; a step sometimes names a port twice, gives one no device, reorders
// a list or drops or adds the second network.
type portWorld struct {
	rng   *rand.Rand
	ports map[string]map[string]*worldPort // network -> name -> port
	withB bool
	// gens numbers the devices: a port added again gets a new one (the
	// data plane closed the old one).
	gens int
}

type worldPort struct {
	gen, mac, ip int
}

func (w *portWorld) step() {
	nets := []string{"a"}
	if w.withB {
		nets = append(nets, "b")
	}
	nw := nets[w.rng.IntN(len(nets))]
	name := fmt.Sprintf("c%d/eth0", w.rng.IntN(12))
	m := w.ports[nw]
	switch r := w.rng.IntN(20); {
	case r < 8:
		if m[name] == nil {
			w.gens++
			m[name] = &worldPort{gen: w.gens, mac: w.rng.IntN(9), ip: w.rng.IntN(9)}
		}
	case r < 13:
		delete(m, name)
	case r < 15:
		if p := m[name]; p != nil {
			w.gens++
			p.gen = w.gens
		}
	case r < 17:
		if p := m[name]; p != nil {
			p.mac, p.ip = w.rng.IntN(9), w.rng.IntN(9)
		}
	case r < 18:
		w.withB = !w.withB
		for _, p := range w.ports["b"] { // the data plane closed their devices
			w.gens++
			p.gen = w.gens
		}
	}
}

// devices gives each (network, name, generation) one device per data
// plane, and names a device back.
type devices struct {
	t    *testing.T
	devs map[string]*netdevtest.Device
	keys map[netdev.Device]string
}

func (ds *devices) get(key string) *netdevtest.Device {
	if d := ds.devs[key]; d != nil {
		return d
	}
	a, b := netdevtest.NewPipe(key, key+"-ctr", netdevtest.DefaultQueue)
	ds.t.Cleanup(func() { b.Close() })
	ds.devs[key], ds.keys[a] = a, key
	return a
}

// config is the world's desired state on ds's devices; extra adds the
// step's oddity (0 none, 1 a port named twice, 2 a port without a
// device, 3 a list reversed).
func (w *portWorld) config(ds *devices, extra int) Config {
	var cfg Config
	nets := []string{"a"}
	if w.withB {
		nets = append(nets, "b")
	}
	for i, nw := range nets {
		nc := testNetwork(nw, uint32(4096+i), 1)
		for _, name := range slices.Sorted(mapKeysOf(w.ports[nw])) {
			p := w.ports[nw][name]
			key := fmt.Sprintf("%s/%s/%d", nw, name, p.gen)
			nc.Ports = append(nc.Ports, PortConfig{Name: name, Device: ds.get(key), MAC: mac(byte(10 + p.mac)), IP: ip(byte(10 + p.ip))})
		}
		if len(nc.Ports) > 0 {
			switch extra {
			case 1:
				nc.Ports = append(nc.Ports, nc.Ports[0])
			case 2:
				nc.Ports = append(nc.Ports, PortConfig{Name: "nodev/eth0", MAC: mac(99), IP: ip(99)})
			case 3:
				slices.Reverse(nc.Ports)
			}
		}
		cfg.Networks = append(cfg.Networks, nc)
	}
	return cfg
}

func mapKeysOf[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// portsView is what a data plane shows of its ports: each port's device
// (by key), MAC, address, state and whether it is on its switch, and each
// switch's local forwarding entries.
func portsView(dp *Dataplane, ds *devices) map[string]string {
	out := map[string]string{}
	dp.mu.Lock()
	for k, p := range dp.ports {
		out["port "+k.network+" "+k.name] = fmt.Sprintf("%s %v %v %s attached=%v", ds.keys[p.cfg.Device], p.cfg.MAC, p.cfg.IP, p.stateString(), p.ref.Load() != nil)
	}
	nets := slices.Sorted(mapKeysOf(dp.nets))
	dp.mu.Unlock()
	for _, nw := range nets {
		fdb, _, _ := dp.FDB(nw)
		var local []string
		for _, e := range fdb {
			if e.Kind == vswitch.KindLocal {
				local = append(local, fmt.Sprintf("%v %v %s", e.MAC, e.IP, e.Port))
			}
		}
		sort.Strings(local)
		out["switch "+nw] = fmt.Sprint(local)
	}
	return out
}

// errorStrings lists the errors joined in err, sorted.
func errorStrings(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if e != nil {
			out = append(out, e.Error())
		}
	}
	walk(err)
	sort.Strings(out)
	return out
}

// TestReconfigIncrementalEqualsFull applies random sequences of desired
// states to two data planes, one taking the fast path where it can and
// one always the full path, and checks after each Reconfig that both
// return the same errors and have the same ports (device, MAC, address,
// state, attached or not) and the same local forwarding entries; and that
// the fast path was taken.
func TestReconfigIncrementalEqualsFull(t *testing.T) {
	seeds := uint64(12)
	if testing.Short() {
		seeds = 4
	}
	fast := 0
	for seed := range seeds {
		w := &portWorld{rng: rand.New(rand.NewPCG(seed, 7)), ports: map[string]map[string]*worldPort{"a": {}, "b": {}}}
		inc, full := newTestbed(t).dp, newTestbed(t).dp
		full.noFastPath = true
		dsInc := &devices{t: t, devs: map[string]*netdevtest.Device{}, keys: map[netdev.Device]string{}}
		dsFull := &devices{t: t, devs: map[string]*netdevtest.Device{}, keys: map[netdev.Device]string{}}
		for i := range 150 {
			w.step()
			extra := 0
			if w.rng.IntN(10) == 0 {
				extra = 1 + w.rng.IntN(3)
			}
			cfgInc, cfgFull := w.config(dsInc, extra), w.config(dsFull, extra)
			inc.mu.Lock()
			_, willFast := inc.portWindows(cfgInc)
			inc.mu.Unlock()
			if willFast {
				fast++
			}
			errInc, errFull := inc.Reconfig(cfgInc), full.Reconfig(cfgFull)
			if a, b := errorStrings(errInc), errorStrings(errFull); !slices.Equal(a, b) {
				t.Fatalf("seed %d step %d (fast path %v): errors differ\n fast %q\n full %q", seed, i, willFast, a, b)
			}
			if a, b := portsView(inc, dsInc), portsView(full, dsFull); !reflect.DeepEqual(a, b) {
				t.Fatalf("seed %d step %d (fast path %v): state differs\n fast %v\n full %v", seed, i, willFast, a, b)
			}
		}
	}
	if fast == 0 {
		t.Fatal("the fast path was never taken")
	}
	t.Logf("%d Reconfigs took the fast path", fast)
}

// TestReconfigFastPathRetriesAPortThatFailed: a port that could not join
// its switch (its MAC was taken) joins on a later Reconfig that only
// changes another port, once the MAC is free, as the full path would.
func TestReconfigFastPathRetriesAPortThatFailed(t *testing.T) {
	tb := newTestbed(t)
	d1, _ := pipe(t, "d1")
	d2, _ := pipe(t, "d2")
	d3, _ := pipe(t, "d3")
	a := testNetwork("a", 4096, 1)
	a.Ports = []PortConfig{{Name: "c1/eth0", Device: d1, MAC: mac(2), IP: ip(2)}, {Name: "c2/eth0", Device: d2, MAC: mac(2), IP: ip(3)},
		{Name: "c3/eth0", Device: d3, MAC: mac(5), IP: ip(5)}}
	if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{a}}); err == nil {
		t.Fatal("two ports with one MAC: no error")
	}
	if s := tb.dp.PortState("a", "c2/eth0"); s == "up" {
		t.Fatal("c2 joined with c1's MAC")
	}
	// Only c1 changes (its MAC): c2 is outside the changed window.
	a.Ports = slices.Clone(a.Ports)
	a.Ports[0].MAC = mac(4)
	cfg := Config{Networks: []NetworkConfig{a}}
	tb.dp.mu.Lock()
	windows, fast := tb.dp.portWindows(cfg)
	tb.dp.mu.Unlock()
	if !fast || len(windows) != 1 || len(windows[0].now) != 1 {
		t.Fatalf("fast path %v, windows %+v: want one window of one port", fast, windows)
	}
	if err := tb.dp.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"c1/eth0", "c2/eth0", "c3/eth0"} {
		if s := tb.dp.PortState("a", name); s != "up" {
			t.Errorf("port %s: %s, want up", name, s)
		}
	}
}
