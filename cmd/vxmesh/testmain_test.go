package main

import (
	"os"
	"testing"

	"github.com/vxmesh/vxmesh/sandbox"
)

// TestMain lets the test binary, re-executed by `run -d` as a container's
// monitor (or by the sandbox as its namespace init), do what the vxmesh
// binary does instead of running every test again in the child, which
// re-executes itself again, without end.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == sandbox.NSInitArg {
		sandbox.NSInitMain(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == monitorArg {
		os.Exit(monitorMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}
