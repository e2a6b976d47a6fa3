package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// stepTimer times the steps of one request for the debug log, so that an
// operator (or a scale test) can see where a slow `run` spends its time
// in the daemon: the waits for d.mu apart ("lock"), then each step's own
// time. A nil stepTimer (debug logging off) does nothing and costs
// nothing.
type stepTimer struct {
	start, last time.Time
	lockWait    time.Duration
	attrs       []any
}

// stepTimer returns a timer for one request, or nil when the log does not
// show debug records.
func (d *Daemon) stepTimer() *stepTimer {
	if !d.log.Enabled(context.Background(), slog.LevelDebug) {
		return nil
	}
	now := time.Now()
	return &stepTimer{start: now, last: now, attrs: make([]any, 0, 32)}
}

// step ends the step named name: the time since the previous step's end,
// less the lock waits, which are counted apart.
func (s *stepTimer) step(name string) {
	if s == nil {
		return
	}
	now := time.Now()
	s.attrs = append(s.attrs, name, now.Sub(s.last))
	s.last = now
}

// lock takes mu, counting the wait for it as "lock".
func (s *stepTimer) lock(mu *sync.Mutex) {
	if s == nil {
		mu.Lock()
		return
	}
	t0 := time.Now()
	mu.Lock()
	now := time.Now()
	s.lockWait += now.Sub(t0)
	// The wait is not part of the step it interrupted.
	s.last = s.last.Add(now.Sub(t0))
}

// log writes the steps at debug level as msg, with the total and the lock
// waits, and the extra attributes.
func (s *stepTimer) log(l *slog.Logger, msg string, extra ...any) {
	if s == nil {
		return
	}
	attrs := append(extra, s.attrs...)
	attrs = append(attrs, "lock", s.lockWait, "total", time.Since(s.start))
	l.Debug(msg, attrs...)
}
