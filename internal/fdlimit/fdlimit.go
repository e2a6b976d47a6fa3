// Package fdlimit raises and reports the process's open-files limit
// (RLIMIT_NOFILE): each container costs the daemon a few descriptors, so
// the daemon runs with the soft limit at the hard limit and reports how
// close it is.
package fdlimit

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Limit is an RLIMIT_NOFILE pair.
type Limit struct {
	Soft, Hard uint64
}

// Get returns the current open-files limit.
func Get() (Limit, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return Limit{}, fmt.Errorf("open-files limit: %w", err)
	}
	return Limit{Soft: rl.Cur, Hard: rl.Max}, nil
}

// Raise sets the soft open-files limit to the hard limit and returns the
// limit before and after. When the soft limit already is the hard limit it
// changes nothing.
func Raise() (before, after Limit, err error) {
	before, err = Get()
	if err != nil {
		return before, before, err
	}
	if before.Soft >= before.Hard {
		return before, before, nil
	}
	rl := unix.Rlimit{Cur: before.Hard, Max: before.Hard}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return before, before, fmt.Errorf("open-files limit: raise soft limit %d to %d: %w", before.Soft, before.Hard, err)
	}
	after, err = Get()
	return before, after, err
}

// Open counts the process's open file descriptors (the entries of
// /proc/self/fd, less the one used to read it).
func Open() (int, error) {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("open descriptors: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return 0, fmt.Errorf("open descriptors: %w", err)
	}
	return len(names) - 1, nil
}
