package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The kernel keeps one IPv4 neighbour (ARP) table for all network
// namespaces, and its limits (net.ipv4.neigh.default.gc_thresh1/2/3, files
// of the initial namespace only) count the entries of every namespace
// together. On a testbed every host resolves every other host it gossips
// with, so N hosts need about N*(N-1) entries: past gc_thresh3 (1024 by
// default, about 32 hosts) the kernel refuses new entries ("neighbor table
// overflow!"), the packet that needed one is dropped, and joins and probes
// between hosts fail at random. Real hosts on a LAN each have a table of
// their own and never share this limit, so the scale section raises it for
// the run and puts it back afterwards.

// neighDir holds the IPv4 neighbour table's limits.
const neighDir = "/proc/sys/net/ipv4/neigh/default"

// neighLimits are the kernel's gc_thresh1, 2 and 3 of a neighbour table.
type neighLimits [3]int

// neighLimitsFor returns the limits under which hosts testbed hosts can each
// hold an entry for every other host, beside what the rest of the machine
// uses now (the current limits are kept as headroom for it), and whether
// they differ from cur. gc_thresh1 (no garbage collection below it) is
// left as it is.
func neighLimitsFor(cur neighLimits, hosts int) (neighLimits, bool) {
	need := hosts * (hosts - 1)
	want := neighLimits{cur[0], max(cur[1], need+cur[1]), max(cur[2], need+cur[2])}
	return want, want != cur
}

// readNeighLimits reads the limits under dir.
func readNeighLimits(dir string) (neighLimits, error) {
	var l neighLimits
	for i := range l {
		p := filepath.Join(dir, fmt.Sprintf("gc_thresh%d", i+1))
		b, err := os.ReadFile(p)
		if err != nil {
			return l, err
		}
		if l[i], err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return l, fmt.Errorf("%s: %w", p, err)
		}
	}
	return l, nil
}

// writeNeighLimits writes l under dir. gc_thresh3 goes first when the
// limits grow and last when they shrink, so the kernel never sees a soft
// limit above the hard one.
func writeNeighLimits(dir string, l, from neighLimits) error {
	order := []int{2, 1, 0}
	if l[2] < from[2] {
		order = []int{0, 1, 2}
	}
	for _, i := range order {
		p := filepath.Join(dir, fmt.Sprintf("gc_thresh%d", i+1))
		if err := os.WriteFile(p, []byte(strconv.Itoa(l[i])+"\n"), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// raiseNeighLimits raises the neighbour table's limits under dir for a
// testbed of hosts hosts, and returns the function that puts the old ones
// back (unless someone changed them meanwhile).
func raiseNeighLimits(dir string, hosts int, log io.Writer) (restore func() error, err error) {
	cur, err := readNeighLimits(dir)
	if err != nil {
		return nil, fmt.Errorf("neighbour table limits: %w (run in the initial network namespace)", err)
	}
	want, change := neighLimitsFor(cur, hosts)
	if !change {
		return func() error { return nil }, nil
	}
	if err := writeNeighLimits(dir, want, cur); err != nil {
		return nil, fmt.Errorf("neighbour table limits: %w", err)
	}
	fmt.Fprintf(log, "scale: IPv4 neighbour table limits (gc_thresh1/2/3, one table for every namespace) raised from %v to %v for %d hosts; restored at the end\n", cur, want, hosts)
	return func() error {
		now, err := readNeighLimits(dir)
		if err != nil {
			return err
		}
		if now != want {
			return errors.New("neighbour table limits changed during the run by someone else: left as they are")
		}
		return writeNeighLimits(dir, cur, want)
	}, nil
}
