package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

func TestRunFailsClearlyAndLeavesNothing(t *testing.T) {
	if err := CheckPrereqs(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	var out bytes.Buffer
	err := Run(context.Background(), &out, "/nonexistent/vxmesh")
	if err == nil {
		t.Fatalf("demo with a missing binary succeeded:\n%s", out.String())
	}
	if !strings.Contains(err.Error(), "daemon") {
		t.Errorf("error does not say the daemon failed: %v", err)
	}
	if !strings.Contains(out.String(), "nothing left behind") {
		t.Errorf("transcript does not report cleanup:\n%s", out.String())
	}
	if left, _ := testbed.ListNetns("vxdemo"); len(left) != 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
}
