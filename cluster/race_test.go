//go:build race

package cluster

// raceEnabled reports whether the tests run with the race detector.
const raceEnabled = true
