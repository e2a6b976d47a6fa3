package health

import (
	"strings"
	"testing"
	"time"
)

func defaults(k Kind, port uint16, path string) Spec {
	return Spec{Kind: k, Port: port, Path: path, Interval: DefaultInterval, Timeout: DefaultTimeout,
		Healthy: DefaultHealthy, Unhealthy: DefaultUnhealthy}
}

func TestParseFlags(t *testing.T) {
	custom := defaults(HTTP, 8080, "/healthz?full=1")
	custom.Interval, custom.Timeout, custom.Healthy, custom.Unhealthy = 5*time.Second, 1500*time.Millisecond, 1, 4
	fast := defaults(TCP, 53, "")
	fast.Interval, fast.Timeout = 500*time.Millisecond, 500*time.Millisecond
	for _, c := range []struct {
		flag, value string
		want        Spec
		text        string // String()
	}{
		{"tcp", "8080", defaults(TCP, 8080, ""), "tcp:8080"},
		{"tcp", "65535", defaults(TCP, 65535, ""), "tcp:65535"},
		{"http", ":8080/healthz", defaults(HTTP, 8080, "/healthz"), "http::8080/healthz"},
		{"http", "8080/healthz", defaults(HTTP, 8080, "/healthz"), "http::8080/healthz"},
		{"http", ":80", defaults(HTTP, 80, "/"), "http::80/"},
		{"http", "80", defaults(HTTP, 80, "/"), "http::80/"},
		{"http", ":8080/healthz?full=1 interval=5s timeout=1.5s healthy=1 unhealthy=4", custom,
			"http::8080/healthz?full=1 interval=5s timeout=1.5s healthy=1 unhealthy=4"},
		// A short interval bounds the default timeout.
		{"tcp", "53 interval=500ms", fast, "tcp:53 interval=500ms timeout=500ms"},
	} {
		parse := ParseTCP
		if c.flag == "http" {
			parse = ParseHTTP
		}
		got, err := parse(c.value)
		if err != nil {
			t.Errorf("--health-%s %q: %v", c.flag, c.value, err)
			continue
		}
		if got != c.want {
			t.Errorf("--health-%s %q = %+v, want %+v", c.flag, c.value, got, c.want)
		}
		if got.String() != c.text {
			t.Errorf("--health-%s %q: String %q, want %q", c.flag, c.value, got.String(), c.text)
		}
		back, err := Parse(got.String())
		if err != nil || back != got {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", got.String(), back, err, got)
		}
	}
	if s := (Spec{}).String(); s != "" {
		t.Errorf("no check: String %q, want empty", s)
	}
}

func TestParseRejects(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "want tcp:PORT or http::PORT/PATH"},
		{"udp:53", `"udp:53": want tcp:PORT`}, {"tcp 80", `"tcp 80": want tcp:PORT`},
		{"tcp", `port ""`},
		{"tcp:0", `port "0"`},
		{"tcp:65536", `port "65536"`},
		{"tcp:-1", `port "-1"`},
		{"tcp::8080", `port ":8080"`},
		{"tcp:8080/x", `port "8080/x"`},
		{"tcp:80  interval=1s", `option ""`},
		{"tcp:80 interval", `option "interval": want key=value`},
		{"tcp:80 interval=soon", `duration "soon"`},
		{"tcp:80 interval=1ms", "interval 1ms: want 10ms to 1h0m0s"},
		{"tcp:80 interval=2h", "interval 2h0m0s"},
		{"tcp:80 timeout=3s", "timeout 3s: want 1ms to the interval (2s)"},
		{"tcp:80 timeout=0s", "timeout 0s"},
		{"tcp:80 healthy=0", "healthy 0: want 1 to 100"},
		{"tcp:80 unhealthy=101", "unhealthy 101"},
		{"tcp:80 unhealthy=x", `count "x"`},
		{"tcp:80 every=1s", `option "every": unknown`},
		{"tcp:80 healthy=1 healthy=2", `option "healthy" given twice`},
		{"http::8080healthz", `port "8080healthz"`},
		{"http::/healthz", `port ""`},
		{"http::8080/a#b", `byte '#' not allowed (escape it as %23)`},
		{"http::8080/a\tb", `byte '\t' not allowed`},
		{"http::8080/caf\u00e9", `not allowed`},
		{"http::8080/" + strings.Repeat("a", MaxPath), "path longer than 1024 bytes"},
		{"tcp:80\ninterval=1s", `port "80\ninterval=1s"`},
	} {
		_, err := Parse(c.in)
		if err == nil {
			t.Errorf("Parse(%q) accepted", c.in)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.want) || !strings.HasPrefix(msg, "health check ") || strings.Contains(msg, "\n") {
			t.Errorf("Parse(%q): %q, want one line with %q", c.in, msg, c.want)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := defaults(HTTP, 80, "/")
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mod  func(*Spec)
		want string
	}{
		{func(s *Spec) { s.Kind = 0 }, "kind 0"},
		{func(s *Spec) { s.Port = 0 }, "port 0"},
		{func(s *Spec) { s.Path = "" }, "must start with /"},
		{func(s *Spec) { s.Kind, s.Path = TCP, "/x" }, "a tcp check has no path"},
		{func(s *Spec) { s.Interval = 0 }, "interval 0s"},
		{func(s *Spec) { s.Timeout = 3 * time.Second }, "timeout 3s"},
		{func(s *Spec) { s.Healthy = 0 }, "healthy 0"},
		{func(s *Spec) { s.Unhealthy = -1 }, "unhealthy -1"},
	} {
		s := ok
		c.mod(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", s, err, c.want)
		}
	}
}

// FuzzParse: whatever Parse accepts is valid, and its String parses back
// to the same Spec, whose String is the same text again.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"tcp:8080", "http::8080/healthz", "http:80", "http::1/a?b=c interval=1h timeout=59m healthy=100 unhealthy=1",
		"tcp:1 interval=10ms", "tcp:80 timeout=1.5s", "http::8080/%20 interval=3.25s", "tcp:08080",
		"udp 1", "http::0/", "tcp:80 healthy=1 healthy=1", "http::8080/a#b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		sp, err := Parse(in)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("Parse(%q): error of more than one line: %q", in, err)
			}
			return
		}
		if err := sp.Validate(); err != nil {
			t.Fatalf("Parse(%q) accepted an invalid spec: %v", in, err)
		}
		text := sp.String()
		back, err := Parse(text)
		if err != nil {
			t.Fatalf("Parse(%q) = %+v; its String %q does not parse: %v", in, sp, text, err)
		}
		if back != sp || back.String() != text {
			t.Fatalf("Parse(%q) = %+v, String %q parses to %+v", in, sp, text, back)
		}
	})
}
