package daemon

import (
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

// TestParsePublish: an attach request's publish specs are checked before
// anything is made: a bad spec, a host port given twice (also once on
// every address and once on one), and ports on an existing container are
// refused with the container named.
func TestParsePublish(t *testing.T) {
	for _, tc := range []struct {
		req  api.AttachRequest
		want string // "" = accepted
	}{
		{api.AttachRequest{Name: "c1", Create: true, Publish: []string{"8080:80", "8080:80/udp", "127.0.0.1:8081:80"}}, ""},
		{api.AttachRequest{Name: "c1", Create: true, Publish: []string{"8080:80", "8080:81"}}, "given twice"},
		{api.AttachRequest{Name: "c1", Create: true, Publish: []string{"127.0.0.1:8080:80", "8080:81"}}, "given twice"},
		{api.AttachRequest{Name: "c1", Create: true, Publish: []string{"8080:80x"}}, "container port"},
		{api.AttachRequest{Name: "c1", Netns: "/run/netns/x", Publish: []string{"8080:80"}}, "only when the container is created"},
	} {
		ps, err := parsePublish(tc.req)
		if tc.want == "" {
			if err != nil || len(ps) != len(tc.req.Publish) {
				t.Errorf("%v: %v, %v", tc.req.Publish, ps, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `container "c1"`) {
			t.Errorf("%v: err %v, want one naming c1 and %q", tc.req.Publish, err, tc.want)
		}
	}
}
