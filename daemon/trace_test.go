package daemon

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

// POST /v1/trace follows a client's frame to a VIP to the backend the
// balancer would pick, names the source by container or address, and
// refuses bad requests with a 4xx naming the cause.
func TestTraceAPI(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.5.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	s := mustCreateService(t, d, api.ServiceCreateRequest{Name: "dns", Networks: []string{"web"}, Ports: []string{"53/udp"}})
	b := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "b", Create: true, Services: []api.ServiceMember{{Name: "dns"}}})
	c := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c", Create: true})
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	post := func(req api.TraceRequest) (int, api.Trace, string) {
		body, _ := json.Marshal(req)
		resp, err := http.Post(srv.URL+"/v1/trace", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		var tr api.Trace
		json.Unmarshal(buf.Bytes(), &tr)
		return resp.StatusCode, tr, buf.String()
	}
	vip := s.VIPs[0].VIP
	code, tr, body := post(api.TraceRequest{Network: "web", From: "c", To: vip + ":53/udp"})
	if code != 200 || tr.Verdict != "deliver" || tr.Out != "b/eth0" || tr.Container != "c" || tr.Src != c.IP ||
		tr.Service == nil || tr.Service.Name != "dns" || tr.Service.Backend != b.IP || tr.Service.BackendPort != 53 {
		t.Fatalf("trace to the VIP: %d %s", code, body)
	}
	if st := d.dp.ServiceStats(); st.ConntrackEntries != 0 {
		t.Fatalf("the trace made %d connections", st.ConntrackEntries)
	}
	if code, tr, body = post(api.TraceRequest{Network: "web", From: c.IP, To: b.IP + ":80"}); code != 200 || tr.Verdict != "deliver" ||
		tr.Container != "c" || tr.DstMAC != b.MAC || tr.Proto != "tcp" || tr.Service != nil {
		t.Fatalf("trace by address to b: %d %s", code, body)
	}
	if code, tr, body = post(api.TraceRequest{Network: "web", From: "c", To: vip + ":54/udp"}); code != 200 || tr.Verdict != "drop" ||
		tr.Drop != "lb-reject" || tr.DropIn != "switch" || tr.Service == nil || tr.Service.Reason != "port" {
		t.Fatalf("trace to a port the service lacks: %d %s", code, body)
	}
	for _, bad := range []struct {
		req  api.TraceRequest
		code int
	}{
		{api.TraceRequest{Network: "web", From: "c", To: "b:80"}, 400},
		{api.TraceRequest{Network: "web", From: "c", To: b.IP, Size: -1}, 400},
		{api.TraceRequest{Network: "", From: "c", To: b.IP}, 400},
		{api.TraceRequest{Network: "web", From: "nope", To: b.IP}, 404},
		{api.TraceRequest{Network: "db", From: "c", To: b.IP}, 404},
		{api.TraceRequest{Network: "web", From: "10.5.0.200", To: b.IP}, 404},
	} {
		// The CLI prefixes "vxmesh trace: ", so the message must not say
		// "trace: " again.
		if code, _, body := post(bad.req); code != bad.code || bytes.Contains([]byte(body), []byte("trace: ")) {
			t.Errorf("%+v: %d %s, want %d and no \"trace: \" in the message", bad.req, code, body, bad.code)
		}
	}
}
