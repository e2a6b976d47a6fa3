package daemon

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// TestParseMeshPort: the long and the short form give the canonical
// spec; bad input is one line naming the spec and the cause.
func TestParseMeshPort(t *testing.T) {
	for in, want := range map[string]string{
		"published=8080,target=80":                                       "published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve",
		"target=53,published=5353,protocol=udp,mode=host,client-ip=snat": "published=5353,target=53,protocol=udp,mode=host,client-ip=snat",
		"published=443,target=8443,client-ip=proxy-v2":                   "published=443,target=8443,protocol=tcp,mode=ingress,client-ip=proxy-v2",
		"8080:80":     "published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve",
		"8080:80/udp": "published=8080,target=80,protocol=udp,mode=ingress,client-ip=preserve",
	} {
		m, err := parseMeshPort(in)
		if err != nil || m.String() != want {
			t.Errorf("parseMeshPort(%q) = %q, %v; want %q", in, m, err, want)
		}
	}
	for in, cause := range map[string]string{
		"published=8080":                                         "no target",
		"target=80":                                              "no published",
		"published=0,target=80":                                  "published",
		"published=8080,target=80,protocol=sctp":                 "protocol",
		"published=8080,target=80,mode=global":                   "mode",
		"published=8080,target=80,client-ip=x":                   "client-ip",
		"published=8080,target=80,published=9":                   "given twice",
		"published=8080,target=80,color=red":                     "unknown key",
		"published=53,target=53,protocol=udp,client-ip=proxy-v2": "tcp only",
		"published=8080,target":                                  "KEY=VALUE",
		"8080":                                                   "PORT:TARGET",
		"8080:080":                                               "target",
		"8080:80/sctp":                                           "protocol",
		"":                                                       "want",
	} {
		_, err := parseMeshPort(in)
		if err == nil || !strings.Contains(err.Error(), cause) || !strings.HasPrefix(err.Error(), "publish ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("parseMeshPort(%q): err %v, want one line naming %q", in, err, cause)
		}
	}
}

// TestParseMeshPorts: published twice (same port and protocol) is
// refused, the same port on tcp and udp is not; a target must be one of
// the service's ports when it lists some; mode=ingress needs a VIP.
func TestParseMeshPorts(t *testing.T) {
	_, canon, err := parseMeshPorts([]string{"9000:90/udp", "8080:80", "8080:80/udp"}, nil, modeVIP)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(canon, " "); got != "published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve published=8080,target=80,protocol=udp,mode=ingress,client-ip=preserve published=9000,target=90,protocol=udp,mode=ingress,client-ip=preserve" {
		t.Fatalf("canonical order: %s", got)
	}
	ports := []lb.Port{{Port: 80, Proto: packet.ProtoTCP}}
	for _, tc := range []struct {
		in    []string
		ports []lb.Port
		mode  string
		cause string
	}{
		{[]string{"8080:80", "published=8080,target=81"}, nil, modeVIP, "published twice"},
		{[]string{"8080:81"}, ports, modeVIP, "not one of the service's ports"},
		{[]string{"8080:80/udp"}, ports, modeVIP, "not one of the service's ports"},
		{[]string{"8080:80"}, nil, modeDNSRR, "dnsrr"},
	} {
		if _, _, err := parseMeshPorts(tc.in, tc.ports, tc.mode); err == nil || !strings.Contains(err.Error(), tc.cause) {
			t.Errorf("%v: err %v, want %q", tc.in, err, tc.cause)
		}
	}
	if _, _, err := parseMeshPorts([]string{"published=8080,target=80,mode=host"}, ports, modeDNSRR); err != nil {
		t.Errorf("mode=host with dnsrr: %v", err)
	}
}

// TestMeshRecordValidation: a record's published ports must be canonical
// and sorted (validated on read, like every field).
func TestMeshRecordValidation(t *testing.T) {
	rec := svcRecord{Name: "web", ID: strings.Repeat("ab", networkIDBytes), Mode: modeVIP,
		VIPs: []svcVIP{{Network: "n1", VIP: "10.0.0.5"}}, Scheduler: "rr", StopGrace: "10s", DNSTTL: "10s", CreatedBy: "h1"}
	rec.Publish = []string{"published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve"}
	s, err := validateService(&rec)
	if err != nil || len(s.publish) != 1 || s.publish[0].published != 8080 || !s.publishes() {
		t.Fatalf("valid record: %v", err)
	}
	for _, bad := range [][]string{{"8080:80"}, {"published=9,target=9,protocol=tcp,mode=ingress,client-ip=preserve", "published=8,target=8,protocol=tcp,mode=ingress,client-ip=preserve"}} {
		rec.Publish = bad
		if _, err := validateService(&rec); err == nil {
			t.Errorf("record with published ports %v accepted", bad)
		}
	}
}

// TestMeshWinners: two services publishing one ingress port (records
// that met after a partition): the one created first serves it.
func TestMeshWinners(t *testing.T) {
	mk := func(name string, created int, pub ...string) *svcSpec {
		s := &svcSpec{rec: svcRecord{Name: name, Created: time.Unix(int64(created), 0)}}
		for _, p := range pub {
			m, _ := parseMeshPort(p)
			s.publish = append(s.publish, m)
			s.rec.Publish = append(s.rec.Publish, m.String())
		}
		return s
	}
	set := serviceSet{specs: map[string]*svcSpec{
		"a": mk("a", 2, "8080:80"), "b": mk("b", 1, "8080:80", "9090:90"), "c": mk("c", 3, "published=9090,target=90,mode=host"),
		"d": mk("d", 4, "published=7070,target=70,mode=host"), "e": mk("e", 5, "published=7070,target=70,mode=host"),
	}}
	lost := meshWinners(set)
	if lost["a"]["published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve"] != "b" || lost["b"] != nil {
		t.Errorf("8080: lost %v, want a to lose to b (created first)", lost)
	}
	if lost["c"]["published=9090,target=90,protocol=tcp,mode=host,client-ip=preserve"] != "b" {
		t.Errorf("9090: lost %v, want c's host port to lose to b's ingress port", lost)
	}
	if lost["d"] != nil || lost["e"] != nil {
		t.Errorf("two mode=host ports may share a port (per host): lost %v", lost)
	}
}

// TestUpdatedPublish: --publish-rm takes PUBLISHED[/PROTO] (tcp by
// default) and must name a published port.
func TestUpdatedPublish(t *testing.T) {
	cur := []string{"published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve", "published=8080,target=80,protocol=udp,mode=ingress,client-ip=preserve"}
	out, err := updatedPublish("web", cur, []string{"9090:90"}, []string{"8080"})
	if err != nil || len(out) != 2 || out[0] != cur[1] || out[1] != "9090:90" {
		t.Fatalf("got %v, %v", out, err)
	}
	if _, err := updatedPublish("web", cur, nil, []string{"7070/udp"}); err == nil || !strings.Contains(err.Error(), "not a published port") {
		t.Fatalf("removing a port not published: %v", err)
	}
}

// FuzzParseMeshPort: whatever parses has a canonical form that parses to
// the same port.
func FuzzParseMeshPort(f *testing.F) {
	for _, s := range []string{"published=8080,target=80", "8080:80/udp", "published=443,target=8443,protocol=tcp,mode=host,client-ip=proxy-v2", "a=b,c", "1:1/", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseMeshPort(s)
		if err != nil {
			return
		}
		m2, err := parseMeshPort(m.String())
		if err != nil || m2 != m {
			t.Fatalf("%q -> %q -> %v, %v", s, m, m2, err)
		}
		if m.published == 0 || m.target == 0 || (m.clientIP == clientProxyV2 && m.proto != "tcp") {
			t.Fatalf("%q parsed to %q", s, m)
		}
	})
}

// freeTCPPort returns a TCP port free on the host right now.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestServicePublish: a service's published port is stored canonical,
// shown, opened on this host (state up) and closed by --publish-rm;
// another service cannot publish it; a host port in use is down with
// the cause, and up once freed (retried on the next reconcile).
func TestServicePublish(t *testing.T) {
	d := serviceDaemon(t)
	p := freeTCPPort(t)
	spec := fmt.Sprintf("published=%d,target=80,protocol=tcp,mode=ingress,client-ip=preserve", p)
	s := mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, Publish: []string{fmt.Sprintf("%d:80", p)}})
	if !slices.Equal(s.Published, []string{spec}) {
		t.Fatalf("published %v, want %s", s.Published, spec)
	}
	state := func(svc string) string {
		t.Helper()
		v, err := d.Service(svc)
		if err != nil {
			t.Fatal(err)
		}
		for _, ps := range v.PublishState {
			if ps.Node == "h1" {
				return ps.State
			}
		}
		return ""
	}
	if st := state("api"); st != "up" {
		t.Fatalf("state %q, want up", st)
	}
	// A loopback client is reset (it would need the gateway's host
	// address, which this test daemon's network has none of), not refused.
	listens := func() bool {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			c.Close()
		}
		return !errors.Is(err, syscall.ECONNREFUSED)
	}
	if !listens() {
		t.Fatal("the published port does not listen")
	}
	_, err := d.CreateService(api.ServiceCreateRequest{Name: "other", Networks: []string{"db"}, Publish: []string{fmt.Sprintf("published=%d,target=81,mode=host", p)}})
	if err == nil || !strings.Contains(err.Error(), `already published by service "api"`) {
		t.Fatalf("a second service on the same port: %v", err)
	}
	if d.findService("other") != nil {
		t.Fatal("the refused service exists")
	}

	if _, err := d.UpdateService("api", api.ServiceUpdateRequest{PublishRemove: []string{strconv.Itoa(p)}}); err != nil {
		t.Fatal(err)
	}
	if listens() {
		t.Fatal("the port still listens after --publish-rm")
	}

	ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", p))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := d.UpdateService("api", api.ServiceUpdateRequest{PublishAdd: []string{fmt.Sprintf("%d:80", p)}}); err != nil {
		t.Fatal(err)
	}
	if st, want := state("api"), fmt.Sprintf("down: host port 0.0.0.0:%d is already in use", p); st != want {
		t.Fatalf("state %q, want %q", st, want)
	}
	ln.Close()
	d.mu.Lock()
	d.reconcile()
	d.mu.Unlock()
	if st := state("api"); st != "up" {
		t.Fatalf("state %q once the port is free, want up", st)
	}
}
