package health

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// State is a backend's health as its checks found it.
type State uint8

// States.
const (
	// Starting: no check has passed yet and fewer than Unhealthy have
	// failed. Not ready: the backend gets no new connections.
	Starting State = iota
	// Healthy: the last check passed, or too few have failed since.
	Healthy
	// Unhealthy: Unhealthy checks in a row failed, and fewer than
	// Healthy have passed since.
	Unhealthy
)

var stateNames = [...]string{Starting: "starting", Healthy: "healthy", Unhealthy: "unhealthy"}

// String is "starting", "healthy" or "unhealthy".
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state(" + fmt.Sprint(uint8(s)) + ")"
}

// ParseState reads what String wrote.
func ParseState(s string) (State, error) {
	if i := slices.Index(stateNames[:], s); i >= 0 {
		return State(i), nil
	}
	return 0, fmt.Errorf("health state %q: want starting, healthy or unhealthy", s)
}

// Target is one backend to check.
type Target struct {
	// Key names the backend to the caller; unique in a SetTargets call.
	// It should name the instance: a target given again with the same
	// key, address and spec keeps its old Dial, so a backend that now
	// lives in another namespace (a restarted container) needs a new
	// key, for example one that includes the namespace's inode.
	Key string
	// Addr is the backend's address; checks go to Addr and Spec.Port.
	Addr netip.Addr
	Spec Spec
	// Dial connects; nil is a plain dial from the caller's namespace.
	Dial DialFunc
	// Group, if set, names the histogram the durations of the target's
	// checks go to (Latencies), such as the backend's service.
	Group string
}

// Event is a change of a backend's state.
type Event struct {
	Key    string
	State  State
	Reason string // the result of the check that changed it
}

// Status is a backend's health now.
type Status struct {
	Key    string
	Addr   netip.Addr
	State  State
	Reason string    // the last check's result; "" before the first
	Since  time.Time // when State began (when the target was added for Starting)
	Last   time.Time // end of the last check; zero before the first
	Checks uint64    // checks run
	Fails  uint64    // checks failed
}

// Prober checks targets, each on its own goroutine, and reports state
// changes. Its methods are safe for concurrent use.
type Prober struct {
	onChange func(Event)
	quit     chan struct{}
	wake     chan struct{} // cap 1: events are pending
	wg       sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	targets map[string]*target
	groups  map[string]*latency // check durations by Target.Group
	pending map[string]Event    // latest undelivered event by key
	queue   []string            // keys in the order their events came
}

// target is a running Target.
type target struct {
	Target
	cancel context.CancelFunc
	// Guarded by Prober.mu.
	stopped         bool
	okRun, failRun  int
	status          Status
	firstCheckDelay time.Duration
}

// NewProber returns a Prober with no targets. onChange gets every state
// change, one call at a time, in order for a key, from a goroutine of the
// Prober; changes that pile up while it runs are coalesced to the latest
// per key. It runs holding no lock of the Prober, so it may call
// SetTargets and Status, but not Close (which waits for it). An event
// already being
// delivered when SetTargets removes its key may still arrive; none
// arrives after Close returns.
func NewProber(onChange func(Event)) *Prober {
	p := &Prober{
		onChange: onChange,
		quit:     make(chan struct{}),
		wake:     make(chan struct{}, 1),
		targets:  map[string]*target{},
		groups:   map[string]*latency{},
		pending:  map[string]Event{},
	}
	p.wg.Add(1)
	go p.dispatch()
	return p
}

// SetTargets replaces the set of targets. A target whose key, address and
// spec are unchanged keeps running as it was (state, counts, timer; its
// old Dial too). One whose address or spec changed keeps its state and
// totals, counts its successes and failures in a row afresh, and is
// checked again soon. A new one starts in
// Starting, with its first check within a tenth of its interval. Targets
// not in ts stop. Bad input (an empty or repeated key, an invalid address
// or spec) is an error naming the target, and changes nothing.
func (p *Prober) SetTargets(ts []Target) error {
	seen := make(map[string]bool, len(ts))
	for _, t := range ts {
		if err := validTarget(t, seen); err != nil {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("health: prober closed")
	}
	now := time.Now()
	for key, old := range p.targets {
		if !seen[key] {
			p.stopLocked(old)
			delete(p.targets, key)
			delete(p.pending, key)
		}
	}
	for _, t := range ts {
		old := p.targets[t.Key]
		if old != nil && old.Addr == t.Addr && old.Spec == t.Spec {
			continue
		}
		nt := &target{Target: t, status: Status{Key: t.Key, Addr: t.Addr, State: Starting, Since: now}}
		nt.firstCheckDelay = jitter(0, t.Spec.Interval/10)
		if old != nil {
			p.stopLocked(old)
			// Same backend, new check: keep what it is and its totals.
			nt.status = old.status
			nt.status.Addr = t.Addr
		}
		p.targets[t.Key] = nt
		p.startLocked(nt)
	}
	p.pruneGroupsLocked()
	return nil
}

func validTarget(t Target, seen map[string]bool) error {
	switch {
	case t.Key == "":
		return fmt.Errorf("health target %s: empty key", t.Addr)
	case seen[t.Key]:
		return fmt.Errorf("health target %q: key given twice", t.Key)
	case !t.Addr.IsValid() || t.Addr.Zone() != "":
		return fmt.Errorf("health target %q: address %q: want an IP address", t.Key, t.Addr)
	}
	seen[t.Key] = true
	if err := t.Spec.Validate(); err != nil {
		return fmt.Errorf("health target %q: %w", t.Key, err)
	}
	return nil
}

func (p *Prober) startLocked(t *target) {
	ctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	p.wg.Add(1)
	go p.run(ctx, t)
}

// stopLocked ends t: its goroutine returns when its check in progress
// does, and records nothing more.
func (p *Prober) stopLocked(t *target) {
	t.stopped = true
	t.cancel()
}

// run checks t until ctx ends: one check, then the interval (±10%).
func (p *Prober) run(ctx context.Context, t *target) {
	defer p.wg.Done()
	timer := time.NewTimer(t.firstCheckDelay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		ok, why := check(ctx, &t.Target)
		if ctx.Err() != nil {
			return // stopped mid-check: the result is not the backend's fault
		}
		now := time.Now()
		p.record(t, ok, why, now, now.Sub(start))
		iv := t.Spec.Interval
		timer.Reset(jitter(iv-iv/10, iv+iv/10))
	}
}

// jitter is a random duration in [lo, hi].
func jitter(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + rand.N(hi-lo+1)
}

// record counts a check's result (which took d) and queues an event if
// the state changed.
func (p *Prober) record(t *target, ok bool, why string, now time.Time, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t.stopped {
		return
	}
	p.observeLocked(t, d)
	st := &t.status
	st.Checks++
	st.Reason, st.Last = why, now
	if ok {
		t.okRun, t.failRun = t.okRun+1, 0
	} else {
		st.Fails++
		t.okRun, t.failRun = 0, t.failRun+1
	}
	next := nextState(st.State, t.okRun, t.failRun, t.Spec)
	if next == st.State {
		return
	}
	st.State, st.Since = next, now
	if _, queued := p.pending[t.Key]; !queued {
		p.queue = append(p.queue, t.Key)
	}
	p.pending[t.Key] = Event{Key: t.Key, State: next, Reason: why}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// nextState applies the thresholds: a Starting backend is Healthy after
// its first success (it takes traffic as soon as it answers) and
// Unhealthy after spec.Unhealthy failures in a row, like a Healthy one;
// an Unhealthy one needs spec.Healthy successes in a row.
func nextState(s State, okRun, failRun int, spec Spec) State {
	switch {
	case failRun >= spec.Unhealthy && s != Unhealthy:
		return Unhealthy
	case s == Starting && okRun >= 1, s == Unhealthy && okRun >= spec.Healthy:
		return Healthy
	}
	return s
}

// dispatch delivers queued events to onChange, outside the lock.
func (p *Prober) dispatch() {
	defer p.wg.Done()
	for {
		select {
		case <-p.quit:
			return
		case <-p.wake:
		}
		for {
			p.mu.Lock()
			if p.closed || len(p.queue) == 0 {
				p.mu.Unlock()
				break
			}
			key := p.queue[0]
			p.queue = p.queue[1:]
			ev, ok := p.pending[key]
			delete(p.pending, key)
			p.mu.Unlock()
			if ok {
				p.onChange(ev)
			}
		}
	}
}

// Status returns every target's health, sorted by key.
func (p *Prober) Status() []Status {
	p.mu.Lock()
	out := make([]Status, 0, len(p.targets))
	for _, t := range p.targets {
		out = append(out, t.status)
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// Close stops every check and waits for the Prober's goroutines to
// return (a check in progress is canceled; an onChange call in progress
// finishes). Later SetTargets calls fail. Close is idempotent.
func (p *Prober) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		for _, t := range p.targets {
			p.stopLocked(t)
		}
		p.targets = map[string]*target{}
		p.pending = map[string]Event{}
		p.queue = nil
		close(p.quit)
	}
	p.mu.Unlock()
	p.wg.Wait()
}
