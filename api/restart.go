package api

import (
	"fmt"
	"strconv"
	"strings"
)

// Restart policy names (`run --restart`), as Docker's.
const (
	RestartNo            = "no"
	RestartOnFailure     = "on-failure"
	RestartAlways        = "always"
	RestartUnlessStopped = "unless-stopped"
)

// RestartPolicy is a container's restart policy: Name is one of the
// Restart* names; MaxRetries bounds the restarts of on-failure (0: no
// bound).
type RestartPolicy struct {
	Name       string
	MaxRetries int
}

// String is the policy as `run --restart` takes it.
func (p RestartPolicy) String() string {
	if p.Name == RestartOnFailure && p.MaxRetries > 0 {
		return fmt.Sprintf("%s:%d", p.Name, p.MaxRetries)
	}
	if p.Name == "" {
		return RestartNo
	}
	return p.Name
}

// maxRestartRetries bounds on-failure:N (Docker sets no bound; a
// larger count is a mistake).
const maxRestartRetries = 1 << 20

// ParseRestartPolicy parses `no` (also ""), `on-failure[:MAX]`, `always`
// or `unless-stopped`. Only on-failure takes a maximum, as in Docker.
func ParseRestartPolicy(s string) (RestartPolicy, error) {
	name, count, hasCount := strings.Cut(s, ":")
	switch name {
	case "", RestartNo, RestartAlways, RestartUnlessStopped:
		if hasCount {
			return RestartPolicy{}, fmt.Errorf("restart policy %q: only on-failure takes a maximum retry count", s)
		}
		if name == "" {
			name = RestartNo
		}
		return RestartPolicy{Name: name}, nil
	case RestartOnFailure:
		p := RestartPolicy{Name: name}
		if !hasCount {
			return p, nil
		}
		n, err := strconv.Atoi(count)
		if err != nil || n < 0 || n > maxRestartRetries {
			return RestartPolicy{}, fmt.Errorf("restart policy %q: maximum retry count %q: want 0-%d", s, count, maxRestartRetries)
		}
		p.MaxRetries = n
		return p, nil
	}
	return RestartPolicy{}, fmt.Errorf("restart policy %q: want no, on-failure[:MAX], always or unless-stopped", s)
}
