//go:build race

package daemon

// raceEnabled reports whether the tests run with the race detector.
const raceEnabled = true
