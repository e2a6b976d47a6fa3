package daemon

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

// FuzzAPI feeds arbitrary request bodies to the mutating endpoints: the
// daemon must answer every one with a JSON body, 2xx only for a request
// that decodes, and never leave an endpoint without a network.
func FuzzAPI(f *testing.F) {
	f.Add("/v1/networks", []byte(`{"name":"web","subnet":"10.0.1.0/24"}`))
	f.Add("/v1/networks", []byte(`{"name":"x","mtu":-5,"vni":99999999}`))
	f.Add("/v1/endpoints", []byte(`{"network":"web","name":"c1","create":true,"ip":"10.0.1.7"}`))
	f.Add("/v1/endpoints", []byte(`{"network":"web","name":"c1","netns":"/x","pid":3}`))
	f.Add("/v1/networks", []byte(`{"name":"a"} {"name":"b"}`))
	f.Add("/v1/endpoints", []byte(`not json`))
	d := newTestDaemon(f, newFakeSandbox(), f.TempDir())
	f.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "base"}); err != nil {
		f.Fatal(err)
	}
	h := d.Handler()
	f.Fuzz(func(t *testing.T, path string, body []byte) {
		if path != "/v1/networks" && path != "/v1/endpoints" {
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		if rec.Code/100 != 2 {
			var e api.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("status %d with body %q: not an api.Error", rec.Code, rec.Body.Bytes())
			}
		}
		nets := map[string]bool{}
		for _, n := range d.Networks() {
			nets[n.Name] = true
		}
		for _, ep := range d.Endpoints() {
			if !nets[ep.Network] {
				t.Fatalf("endpoint %s on missing network %s", ep.Name, ep.Network)
			}
		}
	})
}
