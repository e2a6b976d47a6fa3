package main

import (
	"fmt"
	"math"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// claimPollEvery is how long a create runs before the CLI asks the daemon
// what it waits for, and how often it asks again.
const claimPollEvery = time.Second

// noteClaimWaits runs create (a network or service create, which claims
// its subnet, VNI or VIP with every member) and, while it runs, asks the
// daemon every second whether the claim waits for a member declared dead
// (it may, up to the node grace: such a member may be alive and claiming
// the same); each such member is named once on stderr, with how long ago
// it was declared dead and how much longer the wait lasts at most. A
// daemon that cannot say (an older one) is not asked again.
func noteClaimWaits(env *cliEnv, c *api.Client, create func() error) error {
	done := make(chan error, 1)
	go func() { done <- create() }()
	every := env.claimPoll
	if every <= 0 {
		every = claimPollEvery
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	told := map[string]bool{}
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			waits, err := c.ClaimWaits()
			if err != nil {
				tick.Stop()
				continue
			}
			for _, w := range waits {
				if told[w.Node] {
					continue
				}
				told[w.Node] = true
				// How long ago rounded down, how much longer rounded up:
				// the two add up to the node grace.
				fmt.Fprintf(env.stderr, "waiting for %s (declared dead %s ago) to be released from the cluster, at most %s more\n",
					w.Node, wholeSeconds(math.Floor(w.DeadSeconds)), wholeSeconds(math.Ceil(w.LeftSeconds)))
			}
		}
	}
}

// wholeSeconds prints s whole seconds, as "26s" (never negative).
func wholeSeconds(s float64) string {
	return fmt.Sprintf("%.0fs", max(s, 0))
}
